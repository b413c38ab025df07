"""Multi-scale bitwise spherical quantisation (BSQ): VAE latents <-> per-scale bit labels.

Per scale s (coarse to fine) the residual is area-downsampled to the scale's grid, L2-normalised over the
d channels and replaced by its signs scaled to 1/sqrt(d). The upsampled (trilinear) codes accumulate; the
transformer input of scale s+1 is the running sum resized (trilinear) to that scale's grid.

Schedules here are *VAE* grids. With spatial patchify (Infinity-8B) every 2x2 latent patch is one token
of 4d bits; `patchify=True` folds bits and inputs that way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Quantized:
    bits_BLd: torch.Tensor  # uint8 {0,1}, every token of every scale, scales concatenated row-major
    x_BLd_wo_prefix: torch.Tensor  # float, teacher-forcing inputs of scales 1..K-1
    code_BdHW: torch.Tensor  # float, the summed code at the final latent grid


def _resize(x_Bd1hw: torch.Tensor, hw: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(x_Bd1hw.shape[-2:]) == tuple(hw):
        return x_Bd1hw
    return F.interpolate(x_Bd1hw, size=(1, *hw), mode=mode)


def upsample_code(code_Bd1hw: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Trilinear resize (align_corners=False), the quantiser's only interpolation besides area pooling."""
    return _resize(code_Bd1hw, hw, "trilinear")


def quantize_scale(r_Bd1hw: torch.Tensor) -> torch.Tensor:
    """BSQ of one scale: signs of the L2-normalised residual, scaled to unit norm per token.

    Written as `u + (c - u)` so it doubles as a straight-through estimator and matches the reference
    numerics exactly.
    """
    d = r_Bd1hw.shape[1]
    u = r_Bd1hw / r_Bd1hw.norm(dim=1, keepdim=True).clamp_min(1e-12)
    c = torch.where(u > 0, 1.0, -1.0).to(u.dtype) / d**0.5
    return u + (c - u).detach()


def _tokens(x_Bd1hw: torch.Tensor, patchify: bool) -> torch.Tensor:
    """[B, d, 1, h, w] -> [B, h*w, d] (or [B, (h/2)(w/2), 4d] with patchify)."""
    x = x_Bd1hw.squeeze(2)
    if patchify:
        x = F.pixel_unshuffle(x, 2)
    return x.flatten(2).transpose(1, 2)


def multiscale_quantize(
    z_BdHW: torch.Tensor,
    vae_schedule: Sequence[tuple[int, int]],
    patchify: bool = False,
    flip_prob_BK: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Quantized:
    """Bit labels and teacher-forcing inputs of every scale (the training path of Infinity).

    `flip_prob_BK` (per sample and scale) turns on bitwise self-correction: the bits of scale s are
    flipped with that probability and the *flipped* code is what accumulates, so later scales see (and
    must repair) the mistakes; the labels stay the clean bits of each scale's residual.
    """
    B, d, H, W = z_BdHW.shape
    if tuple(vae_schedule[-1]) != (H, W):
        raise ValueError(
            f"latent grid {(H, W)} does not match the schedule's final grid {tuple(vae_schedule[-1])}"
        )
    z = z_BdHW.unsqueeze(2)
    acc = torch.zeros_like(z)
    bits, inputs = [], []
    for s, hw in enumerate(vae_schedule):
        q = quantize_scale(_resize(z - acc, hw, "area"))
        bits_s = q > 0
        bits.append(_tokens(bits_s.to(torch.uint8), patchify))
        if flip_prob_BK is not None:
            p = flip_prob_BK[:, s].view(B, 1, 1, 1, 1).to(q.device)
            flip = torch.rand(q.shape, generator=generator, device=q.device) < p
            q = (torch.where(flip, ~bits_s, bits_s).to(q.dtype) * 2 - 1) / d**0.5
        acc = acc + upsample_code(q, (H, W))
        if s < len(vae_schedule) - 1:
            inputs.append(_tokens(upsample_code(acc, vae_schedule[s + 1]), patchify))
    return Quantized(torch.cat(bits, 1), torch.cat(inputs, 1), acc.squeeze(2))


def encode_code(z_BdHW: torch.Tensor, vae_schedule: Sequence[tuple[int, int]]) -> torch.Tensor:
    """The VAE's own residual encode: sum of upsampled per-scale codes (what the reference `encode` returns)."""
    H, W = z_BdHW.shape[-2:]
    residual = z_BdHW.unsqueeze(2)
    total = torch.zeros_like(residual)
    for hw in vae_schedule:
        up = upsample_code(quantize_scale(_resize(residual, hw, "area")), (H, W))
        # The residual subtracts a detached code (the official default): each scale's gradient reaches
        # the encoder only through its own straight-through estimate, not through the later scales.
        residual = residual - up.detach()
        total = total + up
    return total.squeeze(2)


def bits_to_code(bits_Bhwd: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Bits of one scale [B, h, w, d] -> code [B, d, 1, h, w] with entries +-1/sqrt(d)."""
    d = bits_Bhwd.shape[-1]
    code = (bits_Bhwd.to(dtype) * 2 - 1) / d**0.5
    return code.permute(0, 3, 1, 2).unsqueeze(2)


def unpatchify_bits(bits_Bhwd: torch.Tensor) -> torch.Tensor:
    """Token bits [B, h, w, 4d] -> latent bits [B, 2h, 2w, d] (inverse of the patchify fold)."""
    return F.pixel_shuffle(bits_Bhwd.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)


def next_scale_input(summed_Bd1HW: torch.Tensor, vae_hw: tuple[int, int], patchify: bool) -> torch.Tensor:
    """Transformer input tokens [B, l, d'] for the next scale from the running code sum."""
    return _tokens(upsample_code(summed_Bd1HW, vae_hw), patchify)
