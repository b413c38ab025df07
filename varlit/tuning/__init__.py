"""Building blocks of subject-driven tuning: freeze masks, scale weights, losses, subject embedding,
bitwise self-correction and the prior bank. The LightningModule (`varlit.module`) wires them together and
owns the parts of a run: the settings (`config`), the teacher and prior loss (`prior`), validation sampling
(`validation`), the optimizer and its updates (`optim`), the frozen VAE/T5 and dtype policy (`frozen`).
Adapter files are read and checked in `adapter` and applied by `varlit.pipeline`."""

from varlit.tuning.freeze import (
    KINDS,
    PRESETS,
    FreezeConfig,
    ResolvedMask,
    TrainableSpec,
    apply_mask,
    resolve_for_model,
    resolve_mask,
    validate,
)
from varlit.tuning.losses import (
    arbooth_joint_kl,
    argmax_bits,
    bitwise_ce,
    hard_distill,
    per_scale_mean,
    scale_weighted_loss,
    soft_distill,
)
from varlit.tuning.prior_bank import PriorBank, PriorBankConfig, PriorBatch, StaleBankError
from varlit.tuning.scale_weights import ScaleWeights, per_scale_weights, per_token_weights
from varlit.tuning.self_correction import CorrectedTokens, SelfCorrectionConfig, self_correct
from varlit.tuning.subject_embedding import (
    PLACEHOLDER,
    SubjectEmbedding,
    find_placeholder,
    splice_placeholder,
)

__all__ = [
    "KINDS",
    "PLACEHOLDER",
    "PRESETS",
    "CorrectedTokens",
    "FreezeConfig",
    "PriorBank",
    "PriorBankConfig",
    "PriorBatch",
    "ResolvedMask",
    "ScaleWeights",
    "SelfCorrectionConfig",
    "StaleBankError",
    "SubjectEmbedding",
    "TrainableSpec",
    "apply_mask",
    "arbooth_joint_kl",
    "argmax_bits",
    "bitwise_ce",
    "find_placeholder",
    "hard_distill",
    "per_scale_mean",
    "per_scale_weights",
    "per_token_weights",
    "resolve_for_model",
    "resolve_mask",
    "scale_weighted_loss",
    "self_correct",
    "soft_distill",
    "splice_placeholder",
    "validate",
]
