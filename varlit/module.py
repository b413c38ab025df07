"""`SubjectTuningModule`: ARBooth-style subject tuning of Infinity as a LightningModule.

Per step: the student is teacher-forced on the subject photos' (self-corrected) bit labels with the instance
prompt, whose `<placeholder>` T5 row is replaced by learned subject vectors (instance loss, scale-weighted
bitwise cross-entropy); and on class-prompt token maps sampled by a frozen teacher (prior distillation
against language drift), either online every step or from a prior bank drawn once.

What lives where:
- `student` is the only registered model. Checkpoints keep just its *trainable* tensors (plus the subject
  embedding and optimizer state); the frozen base comes back from `weights`/`init_seed` on resume.
- The teacher, the VAE and T5 are plain attributes: never in the optimizer, a checkpoint, `.train()` or
  `.parameters()`. The teacher, the prior bank and the prior loss live in `prior`
  (`varlit.tuning.prior.PriorDistillation`); what a validation produced lives in `validation`
  (`varlit.tuning.validation.ValidationSampler`); the settings are `varlit.tuning.config`'s.
- VAE and T5 work on fixed data happens once, in the data module's cache, never in the training step.

Choices of the released ARBooth code kept as options (`arbooth_compat: true` selects them together):
joint-softmax KL over all 2d logits instead of per-bit KL (`prior.loss=soft`), and two backward passes with
two optimizer steps per iteration (`optim.schedule=alternating`). Its bugs are not reproduced: see docs/method.md.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from .models.infinity import Infinity
from .models.presets import Preset, get_preset
from .models.sampler import SamplingConfig
from .models.text import TextBatch, TextEncoder
from .models.vae import BSQVAE
from .pipeline import load_base, resolve_dtype
from .resume import check_trained_tensors, trained_state
from .tuning import optim as optimizer
from .tuning.adapter import base_fingerprint
from .tuning.adapter_source import data_class_word
from .tuning.adapter_writer import tuned_tensors, write_adapter
from .tuning.config import (
    DEFAULT_ADAPTER,
    DEFAULT_FREEZE,
    DEFAULT_OPTIM,
    DEFAULT_PRIOR,
    DEFAULT_SCALE_WEIGHTS,
    DEFAULT_SELF_CORRECTION,
    DEFAULT_SUBJECT,
    DEFAULT_VAL_SAMPLING,
    PRIOR_LOSSES,  # noqa: F401 (the settings' choices stay importable from here)
    PRIOR_SOURCES,  # noqa: F401
    OptimConfig,
    PriorConfig,
    SubjectConfig,
    check_choice,
    validate_settings,
)
from .tuning.freeze import FreezeConfig, ResolvedMask, apply_mask, resolve_for_model, validate
from .tuning.frozen import FrozenEncoders, apply_precision, policy_dtypes
from .tuning.lora import (
    AdapterConfig,
    LoraPlan,
    inject,
    lora_mask,
    plan_lora,
    validate_adapter,
)
from .tuning.losses import bitwise_ce, scale_weighted_loss
from .tuning.parts import Forward, step_seed
from .tuning.prior import PriorDistillation
from .tuning.prior_bank import PriorBatch
from .tuning.scale_weights import ScaleWeights
from .tuning.self_correction import SelfCorrectionConfig, self_correct
from .tuning.subject_embedding import SubjectEmbedding
from .tuning.validation import ValidationSampler


class SubjectTuningModule(pl.LightningModule):
    def __init__(
        self,
        preset: str = "tiny",
        weights: str | None = None,
        vae_weights: str | None = None,
        text_encoder: str | None = None,
        init_seed: int = 0,
        freeze: FreezeConfig = DEFAULT_FREEZE,
        embedding: SubjectConfig = DEFAULT_SUBJECT,
        scale_weights: ScaleWeights = DEFAULT_SCALE_WEIGHTS,
        loss_reduction: str = "per_token",
        self_correction: SelfCorrectionConfig = DEFAULT_SELF_CORRECTION,
        prior: PriorConfig = DEFAULT_PRIOR,
        optim: OptimConfig = DEFAULT_OPTIM,
        gradient_checkpointing: bool = False,
        frozen_dtype: str = "float32",
        tuned_dtype: str = "auto",
        init_device: str = "cpu",
        val_sampling: SamplingConfig = DEFAULT_VAL_SAMPLING,
        val_seed: int = 0,
        val_class_samples: int = 4,
        seed: int = 0,
        arbooth_compat: bool = False,
        adapter: AdapterConfig = DEFAULT_ADAPTER,
    ):
        """
        Args:
            preset: tiny, infinity-2b or infinity-8b.
            weights: transformer checkpoint (path or hub file); default: the preset's (tiny: random init).
            vae_weights: VAE checkpoint (path or hub file); default: the preset's.
            text_encoder: T5 hub id or folder; default: the preset's.
            init_seed: weights seed of a random-initialised base (tiny).
            freeze: which module kinds are trained in which blocks (default preset: arbooth = CA+FFN everywhere).
            embedding: the learned subject vectors that replace the placeholder token's T5 row.
            scale_weights: instance-loss weight per scale (default arbooth: first 8 scales 1.0, the rest 0.5).
            loss_reduction: per_token (official: weights x 1/L summed) or per_scale_mean.
            self_correction: bit flipping on the instance inputs.
            prior: prior distillation (loss, lambda, teacher sampling, online or bank).
            optim: AdamW settings, joint or alternating updates, clipping.
            gradient_checkpointing: recompute each block in backward (less memory, ~30% more time).
            frozen_dtype: float32 | bfloat16 | auto (bf16 on GPU under bf16-mixed): dtype of the frozen
                tensors of the transformer blocks. Everything outside the blocks (embeddings, text projection,
                AdaLN condition, head) stays float32 and runs with autocast off, as in the official code.
            tuned_dtype: float32 | bfloat16 | auto (bfloat16 under arbooth_compat, else float32): dtype of the
                tuned block tensors. bfloat16 is the release's recipe: AdamW updates the bf16 weights directly
                (no float32 master copy), so at lr 2.34e-5 many updates round away. Tuned tensors outside the
                blocks stay float32.
            init_device: where the base model is built or loaded (e.g. cuda: no host copy of a 2B model).
            val_sampling: sampling settings of validation grids.
            val_seed: seed of validation grids.
            val_class_samples: samples of the bare class prompt per validation (drift metric PRES).
            seed: seed of everything random in a step (flips, teacher samples, dropout), per step.
            arbooth_compat: the released code's choices (joint-softmax KL, alternating steps, bf16 tuned tensors).
            adapter: full (train the freeze mask's tensors) or lora (peft LoRA on the linear layers the freeze
                mask selects, every base weight frozen; the teacher is the same model with LoRA off).
        """
        super().__init__()
        configs = {
            "freeze": freeze,
            "embedding": embedding,
            "scale_weights": scale_weights,
            "self_correction": self_correction,
            "prior": prior,
            "optim": optim,
            "val_sampling": val_sampling,
            "adapter": adapter,
        }
        # Plain dicts in hparams keep checkpoints loadable with torch.load(weights_only=True).
        self.save_hyperparameters(ignore=list(configs))
        self.hparams.update({k: asdict(v) for k, v in configs.items()})
        self.preset: Preset = get_preset(preset)
        cfg = self.preset.infinity
        if arbooth_compat:
            optim = OptimConfig(**{**asdict(optim), "schedule": "alternating"})
        validate(freeze, cfg.depth, "freeze")
        validate_adapter(adapter, "adapter")
        validate_settings(
            freeze, embedding, scale_weights, loss_reduction, self_correction, prior, optim, frozen_dtype
        )
        check_choice(tuned_dtype, ("float32", "bfloat16", "auto"), "tuned_dtype")
        self.freeze_cfg, self.subject_cfg, self.scale_weights = freeze, embedding, scale_weights
        self.loss_reduction, self.self_correction, self.optim_cfg = loss_reduction, self_correction, optim
        self.val_sampling, self.val_seed, self.seed = val_sampling, val_seed, seed
        self.arbooth_compat, self.frozen_dtype, self.tuned_dtype = arbooth_compat, frozen_dtype, tuned_dtype
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold only the trainable tensors

        student, vae = load_base(
            self.preset,
            weights,
            vae_weights,
            torch.device(init_device),
            torch.float32,
            init_seed,
            flags=("--model.weights", "--model.vae_weights"),
        )
        self.student: Infinity = student
        self.student.gradient_checkpointing = gradient_checkpointing
        self.mask: ResolvedMask = resolve_for_model(freeze, student, cfg.depth)
        self.adapter_cfg = adapter
        self.lora: LoraPlan | None = None
        # Identity of the frozen base (of the whole base under LoRA, which replaces none of its tensors; under
        # the official names), recorded in adapters so they are never applied to another base.
        lora = adapter.type == "lora"
        self._base_fingerprint = base_fingerprint(student, set() if lora else set(self.mask.trainable))
        if lora:
            self.lora = plan_lora(adapter, self.mask, student)
            # LoRA's random A comes from `seed`, not from whatever the global RNG holds: the same run, the same start.
            dev = torch.device(init_device)
            with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
                torch.manual_seed(step_seed(seed, 0, 3))
                inject(student, self.lora)
            self.mask = lora_mask(self.mask, student, self.lora)
        apply_mask(student, self.mask)
        self.subject_embedding = (
            SubjectEmbedding(embedding.num_vectors, cfg.text_channels) if freeze.subject_embedding else None
        )
        # The teacher (its tuned tensors' pretrained values are taken now, before any step or restore),
        # the prior bank and the prior loss.
        self.prior = PriorDistillation(prior, self.preset, student, self.mask.trainable, lora, arbooth_compat)
        self.encoders = FrozenEncoders(vae, text_encoder or self.preset.text_encoder, cfg.text_maxlen)
        self.validation = ValidationSampler(val_class_samples)
        self.updates = optimizer.ManualUpdates(optim)  # backward, accumulation, checks, optimizer steps

    # ------------------------------------------------------------------------------------------ parts

    # Attributes of the parts under the names callers use (tests, `varlit.bench`, the sample-grid callback).
    prior_cfg = Forward("prior", "cfg")
    validation_outputs = Forward("validation", "outputs")
    _bank = Forward("prior", "bank")
    _bank_store = Forward("prior", "bank_store")
    _class_text = Forward("prior", "class_text")
    _standalone_optimizer = Forward("updates", "standalone")

    @property
    def uses_prior(self) -> bool:
        return self.prior.active

    @property
    def vae(self) -> BSQVAE:
        return self.encoders.vae

    @property
    def text_encoder(self) -> TextEncoder:
        return self.encoders.text_encoder(
            lambda: self._trainer is not None and self._trainer.strategy.root_device.type == "cuda"
        )

    @property
    def teacher(self) -> Infinity:
        """The frozen pretrained copy of the student (full fine-tuning; under LoRA use `teacher_model()`)."""
        return self.prior.teacher(self.student)

    def teacher_model(self) -> contextlib.AbstractContextManager[Infinity]:
        """The frozen pretrained model: a copy sharing the student's frozen tensors (full), or the student
        itself with its LoRA layers disabled and in eval mode (lora)."""
        return self.prior.teacher_model(self.student)

    def _move_frozen(self) -> None:
        self.encoders.to(self.device)
        self.prior.release_teacher()  # rebuilt lazily on this device, sharing the student's tensors

    def _release_teacher(self) -> None:
        self.prior.release_teacher()  # with a complete bank the teacher is no longer needed

    def precision_dtypes(self) -> tuple[torch.dtype, torch.dtype]:
        """(frozen block dtype, tuned block dtype) with `auto` resolved for this device and trainer."""
        device = self._trainer.strategy.root_device if self._trainer is not None else self.device
        precision = str(getattr(self._trainer, "precision", "32"))
        names = policy_dtypes(self.frozen_dtype, self.tuned_dtype, self.arbooth_compat, device, precision)
        return resolve_dtype(names[0], device), resolve_dtype(names[1], device)

    def _apply_precision(self) -> None:
        """The official policy: only block tensors may be half precision; the rest of the model is float32."""
        frozen, tuned = self.precision_dtypes()
        self.prior.frozen_block_dtype = frozen  # the teacher's copy of the tuned tensors follows it
        apply_precision(self.student, self.mask.trainable, frozen, tuned)

    # ------------------------------------------------------------------------------------------ Lightning hooks

    def setup(self, stage: str) -> None:
        if stage == "fit":
            # Before the strategy wraps the model (DDP buckets and FSDP flat parameters fix dtypes).
            self._apply_precision()
        dm = self._datamodule()
        if dm is not None and hasattr(dm, "attach_encoders"):
            dm.attach_encoders(
                vae=self.vae,
                text_encoder=self.text_encoder,
                preset=self.preset,
                vae_id=self._base_id("vae"),
                text_encoder_id=f"{self.encoders.text_encoder_id}@{self.text_encoder.encoder.dtype}",
            )

    def _base_id(self, part: str) -> str:
        h = self.hparams
        if part == "vae":
            return str(
                h.vae_weights or self.preset.vae_weights or f"{self.preset.name}:random-init({h.init_seed})"
            )
        return str(h.weights or self.preset.weights or f"{self.preset.name}:random-init({h.init_seed})")

    def on_fit_start(self) -> None:
        self._move_frozen()
        self._init_subject_embedding()
        if self.global_rank == 0:
            n_subject = (
                sum(p.numel() for p in self.subject_embedding.parameters()) if self.subject_embedding else 0
            )
            table = self.mask.table(self.student, subject_params=n_subject)
            print(f"trainable tensors (block x kind, trainable/total parameters):\n{table}")
        if self.logger is not None:
            self.logger.log_hyperparams(self.mask.as_hparams())
        if self.uses_prior and self.prior_cfg.source == "bank":
            self._prepare_bank()

    def on_validation_start(self) -> None:
        if self.trainer.state.fn != "fit":
            self._move_frozen()
            if self.logger is not None:  # `varlit validate` rewrites hparams.yaml: keep the freeze entries
                self.logger.log_hyperparams(self.mask.as_hparams())

    def on_test_start(self) -> None:
        self._move_frozen()

    def on_train_start(self) -> None:
        self.encoders.offload_text_encoder(self.device)  # the token cache is built by now

    def _init_subject_embedding(self) -> None:
        if self.subject_embedding is None or self.subject_cfg.init != "class" or self.global_step > 0:
            return
        word = self._class_word()
        if not word:
            raise ValueError("embedding.init=class needs a data module that knows the class word")
        feats = self.text_encoder.encode([word])
        n = int(feats.lengths_B[0]) - 1  # without the end-of-sequence token
        self.subject_embedding.init_from_features(feats.features_BTC[0, : max(n, 1)].to(self.device))

    def _datamodule(self):
        return getattr(self._trainer, "datamodule", None) if self._trainer is not None else None

    def _class_word(self) -> str | None:
        return data_class_word(self._datamodule())

    def _build_optimizer(self) -> torch.optim.Optimizer:
        return optimizer.build_optimizer(
            self.optim_cfg, self.student, self.subject_embedding, self.subject_cfg.lr
        )

    def lr_factor(self, step: int) -> float:
        """Multiplier of every group's lr after `step` optimizer steps: warm-up, then the schedule."""
        max_steps = self._trainer.max_steps if self._trainer is not None else -1
        return optimizer.lr_factor(self.optim_cfg, step, max_steps)

    def configure_optimizers(self):
        opt = self._build_optimizer()
        if self.optim_cfg.lr_schedule == "constant" and self.optim_cfg.warmup_steps == 0:
            return opt  # the paper's setting: no scheduler state in checkpoints
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = trained_state(checkpoint["state_dict"], self.mask.trainable)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_trained_tensors(checkpoint["state_dict"], self)

    # ------------------------------------------------------------------------------------------ text

    def instance_text(self, text: TextBatch, placeholder_B: torch.Tensor) -> TextBatch:
        if self.subject_embedding is None:
            return text
        emb = self.subject_embedding
        return emb.splice_text(text, placeholder_B, max_length=self.preset.infinity.text_maxlen)

    # ------------------------------------------------------------------------------------------ prior

    def teacher_samples(
        self, class_text: TextBatch, schedule, generator: torch.Generator | None
    ) -> PriorBatch:
        """Class-prompt token maps from the teacher (KV cache, true positions) and its raw conditional logits."""
        with self.autocast():
            return self.prior.samples(self.student, class_text, schedule, generator)

    def autocast(self) -> torch.autocast:
        """bf16 autocast under bf16-mixed, and whenever the blocks hold bf16 tensors (e.g. a benchmark without
        a Trainer). The model itself keeps its non-block parts in float32 with autocast off."""
        bf16 = self._trainer is not None and "bf16" in str(self._trainer.precision)
        enabled = bf16 or self.student.block_dtype == torch.bfloat16
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _prepare_bank(self) -> None:
        """Draw (or verify) the prior bank of the data module's class prompts on rank 0; every rank holds it."""
        many = self.trainer.world_size > 1
        self.prior.prepare_bank(
            self.trainer.datamodule,
            self._base_id("model"),
            self.encoders.text_encoder_id,
            self.teacher_samples,
            self.device,
            builds=self.global_rank == 0,
            barrier=(lambda: self.trainer.strategy.barrier("prior_bank")) if many else None,
        )

    def prior_batch(self, batch, generator: torch.Generator) -> tuple[PriorBatch, TextBatch]:
        """Teacher token maps and the class-prompt text the student is teacher-forced with."""
        return self.prior.batch(batch, generator, self.device, self.teacher_samples)

    def prior_loss(self, pb: PriorBatch, text: TextBatch, schedule) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, per-scale prior loss [K]); the student is teacher-forced on the teacher's tokens."""
        return self.prior.loss(self.student, pb, text, schedule)

    # ------------------------------------------------------------------------------------------ training

    def instance_loss(self, batch, generator: torch.Generator | None, self_correct_inputs: bool = True):
        if self_correct_inputs and self.self_correction.active:
            tok = self_correct(
                batch.z_BdHW, batch.vae_schedule, self.self_correction, generator, self.preset.patchify
            )
            bits, x = tok.bits_BLd, tok.x_BLd_wo_prefix
        else:
            bits, x = batch.bits_BLd, batch.x_BLd_wo_prefix
        text = self.instance_text(batch.instance_text, batch.instance_placeholder_B)
        logits = self.student(text, x, batch.schedule)
        per_tok = bitwise_ce(logits, bits)
        return scale_weighted_loss(per_tok, batch.schedule, self.scale_weights, self.loss_reduction)

    def _generator(self, stream: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        # Accumulated batches of one step draw from their own streams (the micro-batch index is 0 without).
        stream += 1000 * self.updates.micro_batch
        g.manual_seed(step_seed(self.seed, self.global_step, stream, self.global_rank))
        return g

    def training_step_for_bench(self, batch) -> torch.Tensor:
        """One full iteration without a Trainer (see `build_bench_module`): same maths, no logging."""
        if self.updates.standalone is None:
            self.updates.standalone = self._build_optimizer()
        with self.autocast():
            return self._training_step(batch)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        # Every random draw of a step comes from seeds of (seed, step): a resumed run repeats the same steps.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(
                step_seed(self.seed, self.global_step, 1000 * self.updates.micro_batch, self.global_rank)
            )
            return self._training_step(batch)

    def _training_step(self, batch) -> torch.Tensor:
        gen_inst, gen_prior = self._generator(1), self._generator(2)
        l_inst, inst_scales = self.instance_loss(batch, gen_inst)
        self.updates.check_losses(self, instance=l_inst)
        schedule = batch.schedule
        if self.uses_prior and self.optim_cfg.schedule == "alternating":
            self.updates.step(self, l_inst, ends_iteration=False)
            pb, text = self.prior_batch(batch, gen_prior)
            l_prior, prior_scales = self.prior_loss(pb, text, schedule)
            self.updates.check_losses(self, prior=l_prior)
            self.updates.step(self, self.prior_cfg.weight * l_prior)
            total = l_inst.detach() + self.prior_cfg.weight * l_prior.detach()
        elif self.uses_prior:
            pb, text = self.prior_batch(batch, gen_prior)
            l_prior, prior_scales = self.prior_loss(pb, text, schedule)
            self.updates.check_losses(self, prior=l_prior)
            total = l_inst + self.prior_cfg.weight * l_prior
            self.updates.step(self, total)
        else:
            l_prior, prior_scales, total = None, None, l_inst
            self.updates.step(self, total)
        logs = {"train/loss": total.detach(), "train/inst_loss": l_inst.detach()}
        logs.update({f"train/inst_loss_scale{k:02d}": v for k, v in enumerate(inst_scales.detach())})
        if l_prior is not None:
            logs["train/prior_loss"] = l_prior.detach()
            logs.update({f"train/prior_kl_scale{k:02d}": v for k, v in enumerate(prior_scales.detach())})
        if self._trainer is not None:
            logs["train/lr"] = torch.tensor(float(self.optimizers().param_groups[0]["lr"]))
            self.log_dict(logs, prog_bar=False, on_step=True, on_epoch=False, batch_size=len(batch))
            self.log("loss", total.detach(), prog_bar=True, on_step=True, logger=False, batch_size=len(batch))
        self.last_step_losses = {
            "inst_scales": inst_scales.detach(),
            "prior_scales": None if prior_scales is None else prior_scales.detach(),
        }
        return total.detach()

    # ------------------------------------------------------------------------------------------ validation

    def validation_step(self, batch, batch_idx: int) -> None:
        self.validation.sample_grid(self, batch)
        if batch_idx == 0:
            self._validation_losses()

    def on_validation_epoch_start(self) -> None:
        self.validation.reset()

    def _validation_losses(self) -> None:
        """Instance (and prior) losses without flipping or dropout, per scale, on the first subject batch."""
        losses = self.validation.losses(self)
        if losses is not None:
            logs, batch_size = losses
            self.log_dict(logs, batch_size=batch_size, sync_dist=True)

    def generate_validation_samples(self):
        """This validation's samples for the metrics callback (`varlit.eval.SubjectSamples`): the grid prompts,
        the subject photos and samples of the bare class prompt (for PRES); generated once per validation."""
        return self.validation.samples(self)

    # ------------------------------------------------------------------------------------------ adapters

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        return tuned_tensors(self.student, self.mask.trainable, self.lora)

    def save_adapter(
        self, path: str | Path, extra_meta: dict[str, Any] | None = None, dtype: torch.dtype | None = None
    ) -> Path:
        return write_adapter(self, path, extra_meta, dtype)
