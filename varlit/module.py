"""`SubjectTuningModule`: ARBooth-style subject tuning of Infinity as a LightningModule.

Per step: the student is teacher-forced on the subject photos' (self-corrected) bit labels with the instance
prompt, whose `<placeholder>` T5 row is replaced by learned subject vectors (instance loss, scale-weighted
bitwise cross-entropy); and on class-prompt token maps sampled by a frozen teacher (prior distillation
against language drift), either online every step or from a prior bank drawn once.

What lives where:
- `student` is the only registered model. Checkpoints keep just its *trainable* tensors (plus the subject
  embedding and optimizer state); the frozen base comes back from `weights`/`init_seed` on resume.
- The teacher, the VAE and T5 are plain attributes: never in the optimizer, a checkpoint, `.train()` or
  `.parameters()`. The teacher shares every frozen tensor with the student (no copy); only the tuned part
  is duplicated, from the pretrained values captured before any training or checkpoint restore.
- VAE and T5 work on fixed data happens once, in the data module's cache, never in the training step.

Choices of the released ARBooth code kept as options (`arbooth_compat: true` selects them together):
joint-softmax KL over all 2d logits instead of per-bit KL (`prior.loss=soft`), and two backward passes with
two optimizer steps per iteration (`optim.schedule=alternating`). Its bugs are not reproduced: see README.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from .models.infinity import Infinity, is_block_tensor
from .models.presets import Preset, get_preset
from .models.sampler import SampleOutput, SamplingConfig, sample
from .models.text import TextBatch, TextEncoder
from .models.vae import BSQVAE
from .pipeline import load_base, resolve_dtype
from .tuning.adapter import base_fingerprint, save_adapter
from .tuning.divergence import check_gradients, check_losses
from .tuning.freeze import FreezeConfig, ResolvedMask, apply_mask, resolve_for_model, validate
from .tuning.lora import (
    AdapterConfig,
    LoraPlan,
    adapter_state,
    adapters_disabled,
    inject,
    lora_mask,
    plan_lora,
    validate_adapter,
)
from .tuning.losses import (
    arbooth_joint_kl,
    argmax_bits,
    bitwise_ce,
    hard_distill,
    scale_weighted_loss,
    soft_distill,
)
from .tuning.prior_bank import InMemoryPriorBank, PriorBank, PriorBankConfig, PriorBatch
from .tuning.scale_weights import ScaleWeights
from .tuning.self_correction import SelfCorrectionConfig, self_correct
from .tuning.subject_embedding import PLACEHOLDER, SubjectEmbedding

log = logging.getLogger(__name__)

PRIOR_LOSSES = ("soft", "hard", "none")
BANK_IN_MEMORY_BYTES = 4 * 2**30  # a prior bank up to this size is held on the device
PRIOR_SOURCES = ("online", "bank")
SCHEDULES = ("joint", "alternating")
LR_SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class SubjectConfig:
    """The learned subject vectors that stand in for `<placeholder>`."""

    num_vectors: int = 4
    init: str = "zeros"  # zeros | class (mean T5 feature of the class word)
    lr: float | None = None  # own learning rate (None: the model's)


@dataclass
class PriorConfig:
    """Prior distillation. Teacher sampling defaults are the released ones (cfg 1, tau 0.5, top-k 900, top-p 0.97)."""

    loss: str = "soft"  # soft (per-bit KL at temperature T, times T^2) | hard (CE on teacher argmax) | none
    weight: float = 0.5  # lambda
    temperature: float = 1.0
    source: str = "online"  # online (sample every step) | bank (sample once, reuse from disk)
    sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(cfg=1.0, tau=0.5, top_k=900, top_p=0.97)
    )
    scale_weights: ScaleWeights | None = None  # None: uniform
    batch_size: int | None = None  # teacher samples per step (None: the instance batch size)
    bank: PriorBankConfig = field(default_factory=PriorBankConfig)


@dataclass
class OptimConfig:
    """AdamW; defaults from the released code (lr 6e-3/256, constant, wd 0.005, betas 0.9/0.999, no clipping)."""

    lr: float = 6e-3 / 256
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.005
    eps: float = 1e-8
    schedule: str = "joint"  # joint: one backward of L_inst + lambda L_prior | alternating: two steps
    grad_clip: float | None = None  # max global gradient norm
    accumulate_grad_batches: int = 1  # batches whose gradients are summed (averaged) into one step
    lr_schedule: str = "constant"  # constant (the paper) | linear | cosine decay to 0 at trainer.max_steps
    warmup_steps: int = 0  # linear warm-up from lr/warmup_steps to lr over the first steps


def _check_choice(value: str, choices: tuple[str, ...], where: str) -> None:
    if value not in choices:
        raise ValueError(f"{where}: unknown value {value!r}; choose one of {', '.join(choices)}")


def _no_closure() -> None:
    """The closure of a manual-optimization step: the backward has already run."""


def _step_seed(seed: int, step: int, stream: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + step * 7_919 + stream * 101 + rank * 1_000_000_007) % (2**63 - 1)


# Read-only default configs (shared instances; the module never mutates its configs).
DEFAULT_FREEZE = FreezeConfig()
DEFAULT_SUBJECT = SubjectConfig()
DEFAULT_SCALE_WEIGHTS = ScaleWeights()
DEFAULT_SELF_CORRECTION = SelfCorrectionConfig()
DEFAULT_PRIOR = PriorConfig()
DEFAULT_OPTIM = OptimConfig()
DEFAULT_VAL_SAMPLING = SamplingConfig()
DEFAULT_ADAPTER = AdapterConfig()


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
        self._validate(
            freeze, embedding, scale_weights, loss_reduction, self_correction, prior, optim, frozen_dtype
        )
        _check_choice(tuned_dtype, ("float32", "bfloat16", "auto"), "tuned_dtype")
        self.freeze_cfg, self.subject_cfg, self.scale_weights = freeze, embedding, scale_weights
        self.loss_reduction, self.self_correction, self.prior_cfg, self.optim_cfg = (
            loss_reduction,
            self_correction,
            prior,
            optim,
        )
        self.val_sampling, self.val_seed, self.seed, self.arbooth_compat = (
            val_sampling,
            val_seed,
            seed,
            arbooth_compat,
        )
        self.frozen_dtype = frozen_dtype
        self.tuned_dtype = tuned_dtype
        self._frozen_block_dtype = torch.float32  # set by `_apply_precision`; the teacher's block dtype
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
        if adapter.type == "lora":
            self.lora = plan_lora(adapter, self.mask, student)
            # Identity of the whole base (a LoRA adapter replaces none of its tensors), under the official names.
            self._base_fingerprint = base_fingerprint(student, set())
            # LoRA's random A comes from `seed`, not from whatever the global RNG holds: the same run, the same start.
            dev = torch.device(init_device)
            with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
                torch.manual_seed(_step_seed(seed, 0, 3))
                inject(student, self.lora)
            self.mask = lora_mask(self.mask, student, self.lora)
        else:
            # Identity of the frozen base, recorded in adapters so they are never applied to another base.
            self._base_fingerprint = base_fingerprint(student, set(self.mask.trainable))
        apply_mask(student, self.mask)
        self.subject_embedding = (
            SubjectEmbedding(embedding.num_vectors, cfg.text_channels) if freeze.subject_embedding else None
        )
        # Pretrained values of the tuned tensors: the teacher's copy, taken before any step or restore
        # (none under LoRA: the teacher is the student with LoRA off).
        self._teacher_init = {
            k: v.detach().clone()
            for k, v in student.state_dict().items()
            if k in self.mask.trainable and self.lora is None
        }
        self._frozen: dict[str, Any] = {
            "vae": vae.eval().requires_grad_(False),
            "text_encoder": None,
            "teacher": None,
        }
        self._text_encoder_id = text_encoder or self.preset.text_encoder
        self._bank: PriorBank | InMemoryPriorBank | None = None
        self._bank_store: PriorBank | None = None  # the on-disk bank behind `_bank`
        self._class_text: TextBatch | None = None
        self.validation_outputs: list[dict[str, Any]] = []
        self._validation_samples = None
        self.val_class_samples = val_class_samples
        self._standalone_optimizer: torch.optim.Optimizer | None = None
        self._pending_losses: list[str] = []  # losses checked since the last update (the gradient's source)
        self._grad_source = ""
        self._micro_batch = 0  # batches accumulated since the last optimizer step

    # ------------------------------------------------------------------------------------------ config

    @staticmethod
    def _validate(
        freeze, subject, scale_weights, loss_reduction, self_correction, prior, optim, frozen_dtype
    ) -> None:
        """Every config error is raised here, before any weights are loaded."""
        if subject.num_vectors < 1:
            raise ValueError(f"embedding.num_vectors must be >= 1, got {subject.num_vectors}")
        _check_choice(subject.init, ("zeros", "class"), "embedding.init")
        _check_choice(loss_reduction, ("per_token", "per_scale_mean"), "loss_reduction")
        scale_weights.validate(where="scale_weights")  # the length of an explicit list: at the first batch
        if prior.scale_weights is not None:
            prior.scale_weights.validate(where="prior.scale_weights")
        self_correction.validate("self_correction")
        _check_choice(prior.loss, PRIOR_LOSSES, "prior.loss")
        _check_choice(prior.source, PRIOR_SOURCES, "prior.source")
        if prior.weight < 0:
            raise ValueError(f"prior.weight must be >= 0, got {prior.weight}")
        if prior.temperature <= 0:
            raise ValueError(f"prior.temperature must be > 0, got {prior.temperature}")
        if prior.source == "bank":
            prior.bank.validate("prior.bank")
        _check_choice(optim.schedule, SCHEDULES, "optim.schedule")
        if optim.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {optim.lr}")
        if optim.grad_clip is not None and optim.grad_clip <= 0:
            raise ValueError(f"optim.grad_clip must be > 0 or null, got {optim.grad_clip}")
        if optim.accumulate_grad_batches < 1:
            raise ValueError(
                f"optim.accumulate_grad_batches must be >= 1, got {optim.accumulate_grad_batches}"
            )
        if optim.accumulate_grad_batches > 1 and optim.schedule == "alternating":
            raise ValueError(
                "optim.accumulate_grad_batches > 1 needs optim.schedule=joint (alternating takes two steps per batch)"
            )
        _check_choice(optim.lr_schedule, LR_SCHEDULES, "optim.lr_schedule")
        if optim.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {optim.warmup_steps}")
        _check_choice(frozen_dtype, ("float32", "bfloat16", "auto"), "frozen_dtype")

    @property
    def uses_prior(self) -> bool:
        return self.prior_cfg.loss != "none" and self.prior_cfg.weight > 0

    # ------------------------------------------------------------------------------------------ frozen parts

    @property
    def vae(self) -> BSQVAE:
        return self._frozen["vae"]

    @property
    def text_encoder(self) -> TextEncoder:
        if self._frozen["text_encoder"] is None:
            # float16 on GPU like the released inference code, so cached features match `varlit sample`
            on_gpu = self._trainer is not None and self._trainer.strategy.root_device.type == "cuda"
            te = TextEncoder.from_pretrained(
                self._text_encoder_id,
                dtype=torch.float16 if on_gpu else torch.float32,
                max_length=self.preset.infinity.text_maxlen,
            )
            te.add_token(PLACEHOLDER)
            self._frozen["text_encoder"] = te
        return self._frozen["text_encoder"]

    @property
    def teacher(self) -> Infinity:
        if self.lora is not None:
            raise RuntimeError("under LoRA the teacher is the student with LoRA off: use teacher_model()")
        if self._frozen["teacher"] is None:
            self._frozen["teacher"] = self._build_teacher()
        return self._frozen["teacher"]

    @contextlib.contextmanager
    def teacher_model(self) -> Iterator[Infinity]:
        """The frozen pretrained model: a copy sharing the student's frozen tensors (full), or the student
        itself with its LoRA layers disabled and in eval mode (lora: no second copy of any weight)."""
        if self.lora is not None:
            with adapters_disabled(self.student) as base:
                yield base
        else:
            yield self.teacher

    def _build_teacher(self) -> Infinity:
        """A frozen pretrained copy that shares every frozen tensor with the student."""
        with torch.device("meta"):
            teacher = Infinity(self.preset.infinity)
        state = {}
        for name, t in self.student.state_dict(keep_vars=True).items():
            if name in self._teacher_init:
                # The teacher is frozen throughout: its copy of the tuned tensors follows the frozen policy.
                dtype = self._frozen_block_dtype if is_block_tensor(name) else torch.float32
                state[name] = self._teacher_init[name].to(
                    t.device, dtype if t.is_floating_point() else t.dtype
                )
            else:
                state[name] = t.detach()  # same storage as the student's
        teacher.load_state_dict(state, strict=True, assign=True)
        return teacher.eval().requires_grad_(False)

    def _move_frozen(self) -> None:
        dev = self.device
        self.vae.to(dev)
        if self._frozen["text_encoder"] is not None:
            self._frozen["text_encoder"].to(dev)
        self._frozen["teacher"] = None  # rebuilt lazily on this device, sharing the student's tensors

    def precision_dtypes(self) -> tuple[torch.dtype, torch.dtype]:
        """(frozen block dtype, tuned block dtype) with `auto` resolved for this device and trainer."""
        device = self._trainer.strategy.root_device if self._trainer is not None else self.device
        frozen = self.frozen_dtype
        if frozen == "auto":
            precision = str(getattr(self._trainer, "precision", "32"))
            frozen = "bfloat16" if (device.type == "cuda" and "bf16" in precision) else "float32"
        tuned = self.tuned_dtype
        if tuned == "auto":
            tuned = "bfloat16" if self.arbooth_compat else "float32"
        return resolve_dtype(frozen, device), resolve_dtype(tuned, device)

    def _apply_precision(self) -> None:
        """The official policy: only block tensors may be half precision; the rest of the model is float32.

        Casting keeps each Parameter object (the optimizer's references stay valid); an optimizer state
        restored afterwards is cast by torch to the parameters' dtype.
        """
        frozen, tuned = self.precision_dtypes()
        self._frozen_block_dtype = frozen
        self.student.set_precision(frozen, keep=self.mask.trainable)
        for name, p in self.student.named_parameters():
            if name in self.mask.trainable:
                want = tuned if is_block_tensor(name) else torch.float32
                if p.dtype != want:
                    p.data = p.data.to(want)

    # ------------------------------------------------------------------------------------------ Lightning hooks

    def setup(self, stage: str) -> None:
        if stage == "fit":
            # Before the strategy wraps the model (DDP buckets and FSDP flat parameters fix dtypes).
            self._apply_precision()
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "attach_encoders"):
            dm.attach_encoders(
                vae=self.vae,
                text_encoder=self.text_encoder,
                preset=self.preset,
                vae_id=self._base_id("vae"),
                text_encoder_id=f"{self._text_encoder_id}@{self.text_encoder.encoder.dtype}",
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
        # T5 is only needed to build the token cache (done by now): free the accelerator of it.
        if self._frozen["text_encoder"] is not None and self.device.type != "cpu":
            self._frozen["text_encoder"].to("cpu")

    def _init_subject_embedding(self) -> None:
        if self.subject_embedding is None or self.subject_cfg.init != "class" or self.global_step > 0:
            return
        word = self._class_word()
        if not word:
            raise ValueError("embedding.init=class needs a data module that knows the class word")
        feats = self.text_encoder.encode([word])
        n = int(feats.lengths_B[0]) - 1  # without the end-of-sequence token
        self.subject_embedding.init_from_features(feats.features_BTC[0, : max(n, 1)].to(self.device))

    def _class_word(self) -> str | None:
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        subject = getattr(dm, "subject", None)
        return getattr(subject, "class_word", None) or getattr(dm, "class_word", None)

    def _subject_meta(self) -> dict[str, Any]:
        """The subject an adapter was tuned on (so `varlit eval` / `sample` need not be told again)."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return {}
        out = {
            "subject": getattr(dm, "subject_name", None),
            "subject_dir": getattr(dm, "subject_dir", None),
            "class_word": self._class_word(),
        }
        # a data module without one (a test's stand-in): the header simply lacks it
        out["instance_prompt"] = dm.instance_prompt if hasattr(type(dm), "instance_prompt") else None
        out["identifier"] = dm.identifier if hasattr(type(dm), "identifier") else None  # rare-token runs
        return out

    def _build_optimizer(self) -> torch.optim.Optimizer:
        groups = [{"params": [p for p in self.student.parameters() if p.requires_grad], "name": "model"}]
        if self.subject_embedding is not None:
            lr = self.subject_cfg.lr or self.optim_cfg.lr
            groups.append({"params": list(self.subject_embedding.parameters()), "lr": lr, "name": "subject"})
        o = self.optim_cfg
        return torch.optim.AdamW(
            groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps
        )

    def lr_factor(self, step: int) -> float:
        """Multiplier of every group's lr after `step` optimizer steps: warm-up, then the schedule."""
        o = self.optim_cfg
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.lr_schedule == "constant":
            return 1.0
        total = self._trainer.max_steps if self._trainer is not None else -1
        if total is None or total <= 0:
            raise ValueError(
                f"optim.lr_schedule={o.lr_schedule} decays to trainer.max_steps: set max_steps > 0"
            )
        progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
        return 1.0 - progress if o.lr_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    def configure_optimizers(self):
        opt = self._build_optimizer()
        if self.optim_cfg.lr_schedule == "constant" and self.optim_cfg.warmup_steps == 0:
            return opt  # the paper's setting: no scheduler state in checkpoints
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = {f"student.{k}" for k in self.mask.trainable}
        checkpoint["state_dict"] = {
            k: v
            for k, v in checkpoint["state_dict"].items()
            if k in keep or k.startswith("subject_embedding.")
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        want = {f"student.{k}" for k in self.mask.trainable}
        if self.subject_embedding is not None:
            want |= {f"subject_embedding.{k}" for k, _ in self.subject_embedding.named_parameters()}
        missing = sorted(want - set(checkpoint["state_dict"]))
        if missing:
            raise ValueError(
                f"checkpoint does not hold the tensors this run trains ({len(missing)} missing, e.g. {missing[0]}); "
                "was it written with another freeze spec or adapter type?"
            )
        own = dict(self.named_parameters())
        for k in sorted(want):
            have, mine = tuple(checkpoint["state_dict"][k].shape), tuple(own[k].shape)
            if have == mine:
                continue
            if ".lora_A." in k:  # A is [rank, in]
                raise ValueError(
                    f"checkpoint was trained with LoRA rank {have[0]} ({k}), this run has rank {mine[0]} "
                    "(adapter.rank / adapter.rank_per_kind): resume with the rank it was started with"
                )
            raise ValueError(f"checkpoint tensor {k} has shape {have}, this run's is {mine}")

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
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._autocast_bf16()):
            with self.teacher_model() as teacher:
                out: SampleOutput = sample(
                    teacher,
                    None,
                    class_text,
                    schedule,
                    self.prior_cfg.sampling,
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

    def _autocast_bf16(self) -> bool:
        """bf16 autocast under bf16-mixed, and whenever the blocks hold bf16 tensors (e.g. a benchmark without
        a Trainer). The model itself keeps its non-block parts in float32 with autocast off."""
        if self._trainer is not None and "bf16" in str(self._trainer.precision):
            return True
        return self.student.block_dtype == torch.bfloat16

    def _class_prompts_text(self) -> tuple[TextBatch, list]:
        dm = self.trainer.datamodule
        pb = dm.class_prompt_batch()
        return pb.text.to(self.device), pb.schedule

    def _bank_identity(self, schedule) -> dict[str, Any]:
        dm = self.trainer.datamodule
        return {
            "preset": self.preset.name,
            "weights": self._base_id("model"),
            "tuned_tensors_of_teacher": sorted(self.mask.trainable),
            "schedule": [list(s) for s in schedule],
            "class_prompts": list(dm.class_prompts),
            "sampling": asdict(self.prior_cfg.sampling),
            "text_encoder": self._text_encoder_id,
        }

    def _prepare_bank(self) -> None:
        text, schedule = self._class_prompts_text()
        cfg = self.prior_cfg.bank
        bank = PriorBank(cfg, self._bank_identity(schedule), num_prompts=text.batch_size)
        if self.global_rank == 0:  # draws what is missing or damaged (checksums), or only verifies

            def sample_fn(prompt_idx: torch.Tensor, gen: torch.Generator):
                pb = self.teacher_samples(text.index(prompt_idx.to(text.lengths_B.device)), schedule, gen)
                return pb.bits_BLd, pb.x_BLd_wo_prefix, pb.logits_BLV

            bank.build(sample_fn, device=self.device, log=log.info, warn=log.warning)
        if self.trainer.world_size > 1:
            self.trainer.strategy.barrier("prior_bank")
        self._bank, self._bank_store, self._class_text = bank, bank, text
        L, d = sum(h * w for h, w in schedule), self.preset.infinity.bits
        if len(bank) * L * d * 13 <= BANK_IN_MEMORY_BYTES:  # bits 1 + inputs 4 + logits 8 bytes per bit
            # Small enough to live on the device: no disk reads inside the training step.
            every = bank.batch(list(range(len(bank))))
            self._bank = InMemoryPriorBank(PriorBatch(*(t.to(self.device) for t in vars(every).values())))
        self._release_teacher()

    def _release_teacher(self) -> None:
        """With a complete bank the teacher is no longer needed: its tuned copy leaves the device."""
        self._frozen["teacher"] = None

    def prior_batch(self, batch, generator: torch.Generator) -> tuple[PriorBatch, TextBatch]:
        """Teacher token maps and the class-prompt text the student is teacher-forced with."""
        n = self.prior_cfg.batch_size or len(batch)
        if self.prior_cfg.source == "bank":
            idx = torch.randint(len(self._bank), (n,), generator=generator, device=generator.device).cpu()
            pb = self._bank.batch(idx)
            text = self._class_text.index(pb.prompt_index_B.to(self._class_text.lengths_B.device))
            return PriorBatch(*(t.to(self.device) for t in vars(pb).values())), text
        text = (
            batch.class_text
            if n == len(batch)
            else TextBatch.cat([batch.class_text] * math.ceil(n / len(batch))).index(slice(0, n))
        )
        return self.teacher_samples(text, batch.schedule, generator), text

    def prior_loss(self, pb: PriorBatch, text: TextBatch, schedule) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, per-scale prior loss [K]); the student is teacher-forced on the teacher's tokens."""
        logits = self.student(text, pb.x_BLd_wo_prefix, schedule, drop_condition=False)
        if self.prior_cfg.loss == "hard":
            per_tok = hard_distill(logits, argmax_bits(pb.logits_BLV))
        elif self.arbooth_compat:
            per_tok = arbooth_joint_kl(logits, pb.logits_BLV, self.prior_cfg.temperature)
        else:
            per_tok = soft_distill(logits, pb.logits_BLV, self.prior_cfg.temperature)
        return scale_weighted_loss(per_tok, schedule, self.prior_cfg.scale_weights, "per_token")

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
        stream += 1000 * self._micro_batch
        g.manual_seed(_step_seed(self.seed, self.global_step, stream, self.global_rank))
        return g

    def _current_lr(self) -> float | None:
        opt = self._standalone_optimizer if self._trainer is None else self.optimizers()
        return float(opt.param_groups[0]["lr"]) if opt is not None else None

    def _check_losses(self, **losses: torch.Tensor) -> None:
        """Stop at the first non-finite loss (one line: step, which loss, lr); remembers the gradient's source."""
        check_losses(int(self.global_step), losses, self._current_lr())
        self._grad_source = " + ".join([*self._pending_losses, *losses])
        self._pending_losses = [*self._pending_losses, *losses]

    def _check_gradients(self, opt) -> None:
        """Stop when the gradient about to be applied is not finite (fp16's loss scaler handles its own)."""
        source, self._pending_losses = self._grad_source or "training", []
        if "16-mixed" in str(self.trainer.precision) and "bf16" not in str(self.trainer.precision):
            return
        params = [p for g in opt.param_groups for p in g["params"]]
        check_gradients(int(self.global_step), params, source, self._current_lr())

    def _optimizer_step(self, loss: torch.Tensor, ends_iteration: bool = True) -> None:
        """Backward and update. `ends_iteration=False` (the instance half of an alternating iteration)
        updates without advancing Lightning's step count, so `global_step` and `max_steps` count iterations."""
        if self._standalone_optimizer is not None:  # no Trainer (benchmarks)
            opt = self._standalone_optimizer
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.optim_cfg.grad_clip is not None:
                params = [p for g in opt.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, self.optim_cfg.grad_clip)
            opt.step()
            return
        opt = self.optimizers()
        k = self.optim_cfg.accumulate_grad_batches
        # With accumulation the step's gradient is the mean over k batches: each contributes loss / k.
        self.manual_backward(loss / k if k > 1 else loss)
        self._micro_batch += 1
        if self._micro_batch < k:
            return
        self._micro_batch = 0
        if self.optim_cfg.grad_clip is not None:
            self.clip_gradients(
                opt, gradient_clip_val=self.optim_cfg.grad_clip, gradient_clip_algorithm="norm"
            )
        self._check_gradients(opt)
        if ends_iteration:
            opt.step()
        else:  # the same update through the strategy (precision plugin included), uncounted
            self.trainer.strategy.optimizer_step(opt.optimizer, closure=_no_closure)
            opt.zero_grad(set_to_none=True)
            return
        opt.zero_grad(set_to_none=True)
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()

    def training_step_for_bench(self, batch) -> torch.Tensor:
        """One full iteration without a Trainer (see `build_bench_module`): same maths, no logging."""
        if self._standalone_optimizer is None:
            self._standalone_optimizer = self._build_optimizer()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._autocast_bf16()):
            return self._training_step(batch)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        # Every random draw of a step comes from seeds of (seed, step): a resumed run repeats the same steps.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(
                _step_seed(self.seed, self.global_step, 1000 * self._micro_batch, self.global_rank)
            )
            return self._training_step(batch)

    def _training_step(self, batch) -> torch.Tensor:
        gen_inst, gen_prior = self._generator(1), self._generator(2)
        logs: dict[str, torch.Tensor] = {}
        l_inst, inst_scales = self.instance_loss(batch, gen_inst)
        self._check_losses(instance=l_inst)
        schedule = batch.schedule
        if self.uses_prior and self.optim_cfg.schedule == "alternating":
            self._optimizer_step(l_inst, ends_iteration=False)
            pb, text = self.prior_batch(batch, gen_prior)
            l_prior, prior_scales = self.prior_loss(pb, text, schedule)
            self._check_losses(prior=l_prior)
            self._optimizer_step(self.prior_cfg.weight * l_prior)
            total = l_inst.detach() + self.prior_cfg.weight * l_prior.detach()
        elif self.uses_prior:
            pb, text = self.prior_batch(batch, gen_prior)
            l_prior, prior_scales = self.prior_loss(pb, text, schedule)
            self._check_losses(prior=l_prior)
            total = l_inst + self.prior_cfg.weight * l_prior
            self._optimizer_step(total)
        else:
            l_prior, prior_scales, total = None, None, l_inst
            self._optimizer_step(total)
        logs["train/loss"] = total.detach()
        logs["train/inst_loss"] = l_inst.detach()
        for k, v in enumerate(inst_scales.detach()):
            logs[f"train/inst_loss_scale{k:02d}"] = v
        if l_prior is not None:
            logs["train/prior_loss"] = l_prior.detach()
            for k, v in enumerate(prior_scales.detach()):
                logs[f"train/prior_kl_scale{k:02d}"] = v
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

    @torch.no_grad()
    def generate(
        self,
        text: TextBatch,
        placeholder_B: torch.Tensor | None,
        schedule,
        seed: int | None = None,
        sampling: SamplingConfig | None = None,
        model: Infinity | None = None,
    ) -> SampleOutput:
        """Images from the current student (or `model`) with the subject vectors spliced in."""
        if placeholder_B is not None:
            text = self.instance_text(text, placeholder_B)
        g = torch.Generator(device=self.device).manual_seed(self.val_seed if seed is None else seed)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._autocast_bf16()):
            return sample(
                model or self.student,
                self.vae,
                text,
                schedule,
                sampling or self.val_sampling,
                generator=g,
                patchify=self.preset.patchify,
            )

    def validation_step(self, batch, batch_idx: int) -> None:
        out = self.generate(batch.text, batch.placeholder_B, batch.schedule)
        self.validation_outputs.append({"prompts": list(batch.prompts), "images": out.images_B3HW.detach()})
        if batch_idx == 0:
            self._validation_losses()

    def on_validation_epoch_start(self) -> None:
        self.validation_outputs = []
        self._validation_samples = None

    def _validation_losses(self) -> None:
        """Instance (and prior) losses without flipping or dropout, per scale, on the first subject batch."""
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "train_dataloader"):
            return
        batch = next(iter(dm.train_dataloader())).to(self.device)
        l_inst, inst_scales = self.instance_loss(batch, None, self_correct_inputs=False)
        logs = {"val/inst_loss": l_inst}
        logs.update({f"val/inst_loss_scale{k:02d}": v for k, v in enumerate(inst_scales)})
        if self.uses_prior:
            g = torch.Generator(device=self.device).manual_seed(self.val_seed)
            pb, text = self.prior_batch(batch, g)
            l_prior, prior_scales = self.prior_loss(pb, text, batch.schedule)
            # A KL is >= 0; float rounding of two equal distributions gives about -1e-9: show 0.
            l_prior, prior_scales = l_prior.clamp_min(0), prior_scales.clamp_min(0)
            logs["val/prior_loss"] = l_prior
            logs.update({f"val/prior_kl_scale{k:02d}": v for k, v in enumerate(prior_scales)})
        self.log_dict(logs, batch_size=len(batch), sync_dist=True)

    def generate_validation_samples(self):
        """This validation's samples for the metrics callback: the grid prompts, the subject photos and
        samples of the bare class prompt from the tuned model (for PRES); generated once per validation."""
        from .eval.metrics import SubjectSamples

        if self._validation_samples is not None:
            return self._validation_samples
        if not self.validation_outputs:
            raise RuntimeError("no validation samples yet: run a validation epoch first")
        dm = self.trainer.datamodule
        images = torch.cat([o["images"] for o in self.validation_outputs])
        prompts = [p for o in self.validation_outputs for p in o["prompts"]]
        texts = [
            p.replace(PLACEHOLDER, "").replace("  ", " ").strip() for p in prompts
        ]  # CLIP cannot read it
        class_images = None
        if self.val_class_samples > 0:
            pb = dm.class_prompt_batch().to(self.device)
            reps = -(-self.val_class_samples // len(pb))
            text = TextBatch.cat([pb.text] * reps).index(slice(0, self.val_class_samples))
            class_images = self.generate(text, None, pb.schedule, seed=self.val_seed + 1).images_B3HW
        reference = [r.to(self.device) for r in dm.reference_pixels()]
        self._validation_samples = SubjectSamples(images, prompts, reference, class_images, texts)
        return self._validation_samples

    # ------------------------------------------------------------------------------------------ adapters

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """The tuned tensors an adapter file holds: the masked tensors (full) or the LoRA A/B (lora, under
        peft's portable names `<module>.lora_A.weight`)."""
        if self.lora is not None:
            return adapter_state(self.student)
        params = dict(self.student.named_parameters())
        return {k: params[k] for k in sorted(self.mask.trainable)}

    def save_adapter(
        self, path: str | Path, extra_meta: dict[str, Any] | None = None, dtype: torch.dtype | None = None
    ) -> Path:
        meta = {
            "preset": self.preset.name,
            "weights": self._base_id("model"),
            "placeholder": PLACEHOLDER,
            "class_word": self._class_word(),
            "step": int(self.global_step),
            "freeze": self.mask.as_hparams(),
            "base_fingerprint": self._base_fingerprint,
            "adapter": self.lora.meta(self.adapter_cfg) if self.lora is not None else {"type": "full"},
            "hparams": {k: v for k, v in self.hparams.items()},
            "data": self._subject_meta(),
            **(extra_meta or {}),
        }
        vectors = self.subject_embedding.vectors if self.subject_embedding is not None else None
        return save_adapter(path, self.adapter_tensors(), vectors, meta, dtype=dtype)
