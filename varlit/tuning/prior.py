"""Prior distillation: the frozen teacher, its class-prompt samples (online every step, or drawn once into a
prior bank) and the loss that keeps the student's class prior close to the teacher's (against language drift).

`PriorDistillation` is a plain object owned by the LightningModule (never an `nn.Module`): the teacher and
the bank stay out of the optimizer, checkpoints, `.train()` and `.parameters()`. The student is passed in
on every call, never stored, so the teacher always shares the tensors of the student the module holds now.

- full fine-tuning: the teacher is a copy that shares every frozen tensor with the student (no copy); only
  the tuned part is duplicated, from the pretrained values captured before any training or checkpoint restore.
- LoRA: the teacher is the student itself with its LoRA layers disabled (no second copy of any weight).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import torch

from ..models.infinity import Infinity, is_block_tensor
from ..models.presets import Preset
from ..models.sampler import SampleOutput, sample
from ..models.text import TextBatch
from .config import PriorConfig
from .lora import adapters_disabled
from .losses import arbooth_joint_kl, argmax_bits, hard_distill, scale_weighted_loss, soft_distill
from .prior_bank import InMemoryPriorBank, PriorBank, PriorBatch

log = logging.getLogger(__name__)

BANK_IN_MEMORY_BYTES = 4 * 2**30  # a prior bank up to this size is held on the device


class PriorDistillation:
    """The teacher, its samples (online or from the bank) and the prior loss of one tuning run.

    Args:
        cfg: the prior settings.
        preset: the model preset (architecture, bits, patchify).
        student: the student as built, before any step or restore: the teacher's tuned tensors are copied
            from it here (full fine-tuning); under LoRA nothing is copied.
        trainable: the student's tuned tensor names (the freeze mask).
        lora: whether the student carries LoRA layers (the teacher is then the student with LoRA off).
        arbooth_compat: the released code's joint-softmax KL instead of per-bit KL (`loss=soft`).
    """

    def __init__(
        self,
        cfg: PriorConfig,
        preset: Preset,
        student: Infinity,
        trainable: set[str],
        lora: bool,
        arbooth_compat: bool = False,
    ):
        self.cfg, self.preset, self.lora, self.arbooth_compat = cfg, preset, lora, arbooth_compat
        self.trainable = trainable
        # Pretrained values of the tuned tensors: the teacher's copy, taken before any step or restore
        # (none under LoRA: the teacher is the student with LoRA off).
        self.teacher_init = {
            k: v.detach().clone() for k, v in student.state_dict().items() if k in trainable and not lora
        }
        self.frozen_block_dtype = torch.float32  # the teacher's block dtype (the module's precision policy)
        self._teacher: Infinity | None = None
        self.bank: PriorBank | InMemoryPriorBank | None = None
        self.bank_store: PriorBank | None = None  # the on-disk bank behind `bank`
        self.class_text: TextBatch | None = None  # the class prompts the bank's samples index

    @property
    def active(self) -> bool:
        return self.cfg.loss != "none" and self.cfg.weight > 0

    # ------------------------------------------------------------------------------------------ teacher

    def teacher(self, student: Infinity) -> Infinity:
        """The frozen pretrained copy (full fine-tuning), built on first use on the student's device."""
        if self.lora:
            raise RuntimeError("under LoRA the teacher is the student with LoRA off: use teacher_model()")
        if self._teacher is None:
            self._teacher = self._build_teacher(student)
        return self._teacher

    @contextlib.contextmanager
    def teacher_model(self, student: Infinity) -> Iterator[Infinity]:
        """The frozen pretrained model: a copy sharing the student's frozen tensors (full), or the student
        itself with its LoRA layers disabled and in eval mode (lora: no second copy of any weight)."""
        if self.lora:
            with adapters_disabled(student) as base:
                yield base
        else:
            yield self.teacher(student)

    def _build_teacher(self, student: Infinity) -> Infinity:
        """A frozen pretrained copy that shares every frozen tensor with the student."""
        with torch.device("meta"):
            teacher = Infinity(self.preset.infinity)
        state = {}
        for name, t in student.state_dict(keep_vars=True).items():
            if name in self.teacher_init:
                # The teacher is frozen throughout: its copy of the tuned tensors follows the frozen policy.
                dtype = self.frozen_block_dtype if is_block_tensor(name) else torch.float32
                state[name] = self.teacher_init[name].to(
                    t.device, dtype if t.is_floating_point() else t.dtype
                )
            else:
                state[name] = t.detach()  # same storage as the student's
        teacher.load_state_dict(state, strict=True, assign=True)
        return teacher.eval().requires_grad_(False)

    def release_teacher(self) -> None:
        """Drop the teacher copy: rebuilt lazily (on the student's device) if needed again; with a complete
        bank it is not, and its tuned copy leaves the device."""
        self._teacher = None

    def samples(
        self, student: Infinity, class_text: TextBatch, schedule, generator: torch.Generator | None
    ) -> PriorBatch:
        """Class-prompt token maps from the teacher (KV cache, true positions) and its raw conditional logits.
        Runs under the caller's autocast (the module's precision policy)."""
        with self.teacher_model(student) as teacher:
            out: SampleOutput = sample(
                teacher,
                None,
                class_text,
                schedule,
                self.cfg.sampling,
                generator=generator,
                patchify=self.preset.patchify,
                return_logits=True,
            )
        B = class_text.batch_size
        return PriorBatch(
            torch.zeros(B, dtype=torch.long),
            out.bits_BLd,
            out.x_BLd_wo_prefix.float(),
            out.cond_logits_BLV.float(),
        )

    # ------------------------------------------------------------------------------------------ bank

    def bank_identity(
        self, schedule, class_prompts: list[str], weights: str, text_encoder: str
    ) -> dict[str, Any]:
        """Whatever the bank's samples depend on: a bank built for another identity is stale."""
        return {
            "preset": self.preset.name,
            "weights": weights,
            "tuned_tensors_of_teacher": sorted(self.trainable),
            "schedule": [list(s) for s in schedule],
            "class_prompts": list(class_prompts),
            "sampling": asdict(self.cfg.sampling),
            "text_encoder": text_encoder,
        }

    def prepare_bank(
        self,
        dm,
        weights: str,
        text_encoder: str,
        sample_fn: Callable[[TextBatch, Any, torch.Generator], PriorBatch],
        device: torch.device,
        builds: bool,
        barrier: Callable[[], None] | None = None,
    ) -> None:
        """The bank of the data module's class prompts: built (or verified) where `builds` (one rank), then,
        after `barrier`, held by every rank: on the device when small enough, else read from disk per batch.
        The teacher is released afterwards. `weights` and `text_encoder` name the base, for the bank's identity."""
        pb = dm.class_prompt_batch()
        text, schedule = pb.text.to(device), pb.schedule
        identity = self.bank_identity(schedule, dm.class_prompts, weights, text_encoder)
        bank = PriorBank(self.cfg.bank, identity, num_prompts=text.batch_size)
        if builds:  # draws what is missing or damaged (checksums), or only verifies

            def draw(prompt_idx: torch.Tensor, gen: torch.Generator):
                pb = sample_fn(text.index(prompt_idx.to(text.lengths_B.device)), schedule, gen)
                return pb.bits_BLd, pb.x_BLd_wo_prefix, pb.logits_BLV

            bank.build(draw, device=device, log=log.info, warn=log.warning)
        if barrier is not None:
            barrier()
        self.bank, self.bank_store, self.class_text = bank, bank, text
        L, d = sum(h * w for h, w in schedule), self.preset.infinity.bits
        if len(bank) * L * d * 13 <= BANK_IN_MEMORY_BYTES:  # bits 1 + inputs 4 + logits 8 bytes per bit
            # Small enough to live on the device: no disk reads inside the training step.
            every = bank.batch(list(range(len(bank))))
            self.bank = InMemoryPriorBank(PriorBatch(*(t.to(device) for t in vars(every).values())))
        self.release_teacher()

    # ------------------------------------------------------------------------------------------ loss

    def batch(
        self,
        batch,
        generator: torch.Generator,
        device: torch.device,
        sample_fn: Callable[[TextBatch, Any, torch.Generator], PriorBatch],
    ) -> tuple[PriorBatch, TextBatch]:
        """Teacher token maps and the class-prompt text the student is teacher-forced with: `batch_size`
        samples from the bank, or drawn now by `sample_fn` for the batch's class prompts."""
        n = self.cfg.batch_size or len(batch)
        if self.cfg.source == "bank":
            idx = torch.randint(len(self.bank), (n,), generator=generator, device=generator.device).cpu()
            pb = self.bank.batch(idx)
            text = self.class_text.index(pb.prompt_index_B.to(self.class_text.lengths_B.device))
            return PriorBatch(*(t.to(device) for t in vars(pb).values())), text
        text = (
            batch.class_text
            if n == len(batch)
            else TextBatch.cat([batch.class_text] * math.ceil(n / len(batch))).index(slice(0, n))
        )
        return sample_fn(text, batch.schedule, generator), text

    def loss(
        self, student: Infinity, pb: PriorBatch, text: TextBatch, schedule
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, per-scale prior loss [K]); the student is teacher-forced on the teacher's tokens."""
        logits = student(text, pb.x_BLd_wo_prefix, schedule, drop_condition=False)
        if self.cfg.loss == "hard":
            per_tok = hard_distill(logits, argmax_bits(pb.logits_BLV))
        elif self.arbooth_compat:
            per_tok = arbooth_joint_kl(logits, pb.logits_BLV, self.cfg.temperature)
        else:
            per_tok = soft_distill(logits, pb.logits_BLV, self.cfg.temperature)
        return scale_weighted_loss(per_tok, schedule, self.cfg.scale_weights, "per_token")
