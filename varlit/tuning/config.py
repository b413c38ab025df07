"""Settings of a tuning run that are not a building block's own (`model.embedding`, `model.prior`,
`model.optim`), and the check of every tuning setting before any weights are loaded.

`SubjectTuningModule` takes these as `__init__` arguments, so LightningCLI configs and flags name them
`model.embedding.*`, `model.prior.*` and `model.optim.*`; `varlit.module` re-exports the classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..models.sampler import SamplingConfig
from .freeze import FreezeConfig
from .lora import AdapterConfig
from .prior_bank import PriorBankConfig
from .scale_weights import ScaleWeights
from .self_correction import SelfCorrectionConfig

PRIOR_LOSSES = ("soft", "hard", "none")
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


def check_choice(value: str, choices: tuple[str, ...], where: str) -> None:
    if value not in choices:
        raise ValueError(f"{where}: unknown value {value!r}; choose one of {', '.join(choices)}")


def validate_settings(
    freeze: FreezeConfig,
    subject: SubjectConfig,
    scale_weights: ScaleWeights,
    loss_reduction: str,
    self_correction: SelfCorrectionConfig,
    prior: PriorConfig,
    optim: OptimConfig,
    frozen_dtype: str,
) -> None:
    """Every config error of these settings, one line naming the field (`freeze` is checked against the
    preset's depth by `freeze.validate`)."""
    if subject.num_vectors < 1:
        raise ValueError(f"embedding.num_vectors must be >= 1, got {subject.num_vectors}")
    check_choice(subject.init, ("zeros", "class"), "embedding.init")
    check_choice(loss_reduction, ("per_token", "per_scale_mean"), "loss_reduction")
    scale_weights.validate(where="scale_weights")  # the length of an explicit list: at the first batch
    if prior.scale_weights is not None:
        prior.scale_weights.validate(where="prior.scale_weights")
    self_correction.validate("self_correction")
    check_choice(prior.loss, PRIOR_LOSSES, "prior.loss")
    check_choice(prior.source, PRIOR_SOURCES, "prior.source")
    if prior.weight < 0:
        raise ValueError(f"prior.weight must be >= 0, got {prior.weight}")
    if prior.temperature <= 0:
        raise ValueError(f"prior.temperature must be > 0, got {prior.temperature}")
    if prior.source == "bank":
        prior.bank.validate("prior.bank")
    check_choice(optim.schedule, SCHEDULES, "optim.schedule")
    if optim.lr <= 0:
        raise ValueError(f"optim.lr must be > 0, got {optim.lr}")
    if optim.grad_clip is not None and optim.grad_clip <= 0:
        raise ValueError(f"optim.grad_clip must be > 0 or null, got {optim.grad_clip}")
    if optim.accumulate_grad_batches < 1:
        raise ValueError(f"optim.accumulate_grad_batches must be >= 1, got {optim.accumulate_grad_batches}")
    if optim.accumulate_grad_batches > 1 and optim.schedule == "alternating":
        raise ValueError(
            "optim.accumulate_grad_batches > 1 needs optim.schedule=joint (alternating takes two steps per batch)"
        )
    check_choice(optim.lr_schedule, LR_SCHEDULES, "optim.lr_schedule")
    if optim.warmup_steps < 0:
        raise ValueError(f"optim.warmup_steps must be >= 0, got {optim.warmup_steps}")
    check_choice(frozen_dtype, ("float32", "bfloat16", "auto"), "frozen_dtype")


# Read-only default settings of `SubjectTuningModule` (shared instances; the module never mutates its configs).
DEFAULT_FREEZE = FreezeConfig()
DEFAULT_SUBJECT = SubjectConfig()
DEFAULT_SCALE_WEIGHTS = ScaleWeights()
DEFAULT_SELF_CORRECTION = SelfCorrectionConfig()
DEFAULT_PRIOR = PriorConfig()
DEFAULT_OPTIM = OptimConfig()
DEFAULT_VAL_SAMPLING = SamplingConfig()
DEFAULT_ADAPTER = AdapterConfig()
