"""Bitwise self-correction for the instance inputs (Infinity's training-time bit flipping).

Per scale a flip probability p is drawn, the scale's bits are flipped with probability p, and the
*flipped* code goes into the running sum; later scales then quantise the residual of that corrupted sum,
so their labels teach the model to repair earlier mistakes. Labels of a scale are always its clean bits.

As in the official `BitwiseSelfCorrection.flip_requant` (defaults noise_apply_strength 0.3,
noise_apply_layers 13 = every scale, noise_apply_requant 1): p is drawn once per scale and shared by the
whole batch, uniformly from the grid {0, 0.01, ..., max_p}. `per_sample=True` draws one p per sample
and scale instead. The quantiser loop itself is `varlit.models.quantizer.multiscale_quantize`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from varlit.models.quantizer import Quantized, multiscale_quantize

P_STEP = 0.01


@dataclass
class SelfCorrectionConfig:
    """Bit flipping on the instance inputs; `enabled: false` or `max_p: 0` gives the plain quantiser."""

    enabled: bool = True
    max_p: float = 0.3
    num_scales: int | None = None  # flip only the first n scales (None: all, as released)
    per_sample: bool = False

    def validate(self, where: str = "self_correction") -> None:
        if (
            isinstance(self.max_p, bool)
            or not isinstance(self.max_p, int | float)
            or not 0 <= self.max_p <= 1
        ):
            raise ValueError(f"{where}.max_p: expected a probability in [0, 1], got {self.max_p!r}")
        if self.num_scales is not None and (
            isinstance(self.num_scales, bool) or not isinstance(self.num_scales, int) or self.num_scales < 0
        ):
            raise ValueError(
                f"{where}.num_scales: expected a non-negative integer or null, got {self.num_scales!r}"
            )

    @property
    def active(self) -> bool:
        return self.enabled and self.max_p > 0 and self.num_scales != 0


@dataclass
class CorrectedTokens:
    """Quantiser output with flipping: clean labels, inputs built from flipped bits, and the drawn p."""

    bits_BLd: torch.Tensor
    x_BLd_wo_prefix: torch.Tensor
    code_BdHW: torch.Tensor
    flip_p_BK: torch.Tensor  # float32, the probability used at every (sample, scale)


def draw_flip_probs(
    cfg: SelfCorrectionConfig, batch: int, num_scales: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """float32 [B, K] flip probabilities on the 0.01 grid in [0, max_p]; zero beyond `num_scales`."""
    cfg.validate()
    steps = math.floor(cfg.max_p / P_STEP + 1e-6)
    device = generator.device if generator is not None else torch.device("cpu")
    shape = (batch, num_scales) if cfg.per_sample else (1, num_scales)
    k = torch.randint(0, steps + 1, shape, generator=generator, device=device)
    p = (k.float() * P_STEP).expand(batch, num_scales).clone()
    if cfg.num_scales is not None:
        p[:, cfg.num_scales :] = 0
    return p


def self_correct(
    z_BdHW: torch.Tensor,
    vae_schedule: Sequence[tuple[int, int]],
    cfg: SelfCorrectionConfig,
    generator: torch.Generator | None = None,
    patchify: bool = False,
) -> CorrectedTokens:
    """Labels and teacher-forcing inputs of raw VAE features with bitwise self-correction.

    When `cfg.active` is false this is exactly `multiscale_quantize(z, schedule)` (and draws nothing from
    the generator). The generator must live on z's device; it drives both p and the flip masks.
    """
    cfg.validate()
    B, K = z_BdHW.shape[0], len(vae_schedule)
    if not cfg.active:
        q: Quantized = multiscale_quantize(z_BdHW, vae_schedule, patchify=patchify)
        p = torch.zeros(B, K)
    else:
        if generator is not None and generator.device.type != z_BdHW.device.type:
            raise ValueError(f"the generator is on {generator.device}, the features on {z_BdHW.device}")
        p = draw_flip_probs(cfg, B, K, generator)
        q = multiscale_quantize(z_BdHW, vae_schedule, patchify=patchify, flip_prob_BK=p, generator=generator)
    return CorrectedTokens(q.bits_BLd, q.x_BLd_wo_prefix, q.code_BdHW, p.float().cpu())
