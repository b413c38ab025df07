"""Losses of subject-driven tuning: bitwise cross-entropy, prior distillation, and their scale-weighted reduction.

Every loss here first gives a per-token value [B, L]; `scale_weighted_loss` turns that into a scalar
with optional scale weights, so instance and prior losses share one reduction.

Logits are [B, L, 2d] read as `view(B, L, d, 2)`: for bit j the pair (logit of 0, logit of 1).
All losses compute in float32 whatever the logits' dtype (bf16 autocast included).

Reductions (B batch, L tokens, w_l the weight of token l's scale, l_bl the per-token loss):
- `per_token`: mean_b sum_l w_l * l_bl / L. With uniform weights this is the plain token mean. It is the
  official reduction: Infinity's trainer (and ARBooth's) does `loss.mul(lw).sum(-1).mean()` with
  `lw = 1 / L` (ARBooth first multiplies tokens beyond the first 8 scales by 0.5), so weights are *not*
  renormalised and the fine scales, holding most tokens, still dominate.
- `per_scale_mean`: m_s = mean over the batch and scale s's tokens; loss = sum_s w_s m_s / sum_s w_s, a
  convex combination of per-scale means (normalised by the weight sum, so its size does not depend on how
  the weights are scaled and uniform weights give the plain mean of the per-scale means).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from varlit.tuning.scale_weights import ScaleWeights, per_scale_weights, scale_areas

REDUCTIONS: tuple[str, ...] = ("per_token", "per_scale_mean")


def _pairs(logits_BLV: torch.Tensor) -> torch.Tensor:
    if logits_BLV.dim() != 3 or logits_BLV.shape[-1] % 2:
        raise ValueError(f"logits must be [B, L, 2d], got shape {tuple(logits_BLV.shape)}")
    B, L, V = logits_BLV.shape
    return logits_BLV.float().view(B, L, V // 2, 2)


def bitwise_ce(logits_BLV: torch.Tensor, bits_BLd: torch.Tensor) -> torch.Tensor:
    """Per-token loss [B, L]: two-way cross-entropy of every bit, averaged over the d bits."""
    pairs = _pairs(logits_BLV)
    if bits_BLd.shape != pairs.shape[:3]:
        raise ValueError(f"bits have shape {tuple(bits_BLd.shape)}, logits give {tuple(pairs.shape[:3])}")
    logp = F.log_softmax(pairs, dim=-1)
    nll = -logp.gather(-1, bits_BLd.long().unsqueeze(-1)).squeeze(-1)
    return nll.mean(-1)


def argmax_bits(logits_BLV: torch.Tensor) -> torch.Tensor:
    """uint8 [B, L, d]: the more likely value of every bit (a tie gives 0)."""
    return _pairs(logits_BLV).argmax(-1).to(torch.uint8)


def hard_distill(student_logits_BLV: torch.Tensor, teacher_bits_BLd: torch.Tensor) -> torch.Tensor:
    """Per-token [B, L]: bitwise CE of the student on the teacher's argmax bits (`argmax_bits(teacher)`)."""
    return bitwise_ce(student_logits_BLV, teacher_bits_BLd)


def soft_distill(
    student_logits_BLV: torch.Tensor, teacher_logits_BLV: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Per-token [B, L]: per-bit two-way KL(teacher || student) at temperature T, times T^2, mean over bits.

    The T^2 factor keeps gradient sizes comparable across temperatures (Hinton et al.). The teacher is
    detached: gradients reach the student only.
    """
    if not temperature > 0:
        raise ValueError(f"distillation temperature must be positive, got {temperature}")
    s, t = _pairs(student_logits_BLV), _pairs(teacher_logits_BLV.detach())
    if s.shape != t.shape:
        raise ValueError(f"student logits {tuple(s.shape)} and teacher logits {tuple(t.shape)} differ")
    log_q = F.log_softmax(s / temperature, dim=-1)
    log_p = F.log_softmax(t / temperature, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return kl.mean(-1) * temperature**2


def arbooth_joint_kl(
    student_logits_BLV: torch.Tensor, teacher_logits_BLV: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Per-token [B, L]: the released ARBooth soft loss, KL(teacher || student) of softmaxes over *all* 2d logits.

    This treats the 2d logits of a token as one categorical distribution (not d two-way choices) and has no
    T^2 factor; the release uses T = 1, reduces it with `per_token` and uniform weights (1/L summed, mean over
    the batch) and multiplies by lambda = 0.5. Kept for `arbooth_compat`.
    """
    if not temperature > 0:
        raise ValueError(f"distillation temperature must be positive, got {temperature}")
    s, t = student_logits_BLV.float(), teacher_logits_BLV.detach().float()
    if s.shape != t.shape:
        raise ValueError(f"student logits {tuple(s.shape)} and teacher logits {tuple(t.shape)} differ")
    log_q = F.log_softmax(s / temperature, dim=-1)
    log_p = F.log_softmax(t / temperature, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def scale_ids(schedule: Sequence[Sequence[int]], device: torch.device | str | None = None) -> torch.Tensor:
    """int64 [L]: the scale index of every token."""
    areas = scale_areas(schedule)
    return torch.repeat_interleave(
        torch.arange(len(areas), device=device), torch.tensor(areas, device=device)
    )


def per_scale_mean(per_token_BL: torch.Tensor, schedule: Sequence[Sequence[int]]) -> torch.Tensor:
    """[K]: mean of a per-token value over the batch and each scale's tokens (what gets logged per scale)."""
    areas = scale_areas(schedule)
    if per_token_BL.dim() != 2 or per_token_BL.shape[1] != sum(areas):
        raise ValueError(
            f"per-token values have shape {tuple(per_token_BL.shape)}, the schedule has {sum(areas)} tokens"
        )
    ids = scale_ids(schedule, per_token_BL.device)
    sums = per_token_BL.new_zeros(len(areas)).index_add(0, ids, per_token_BL.sum(0))
    counts = torch.tensor(areas, device=per_token_BL.device, dtype=per_token_BL.dtype) * per_token_BL.shape[0]
    return sums / counts


def scale_weighted_loss(
    per_token_BL: torch.Tensor,
    schedule: Sequence[Sequence[int]],
    weights: ScaleWeights | torch.Tensor | None = None,
    reduction: str = "per_token",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scalar loss, per-scale means [K]) of a per-token loss; `weights` None means uniform.

    The per-scale means are unweighted and keep their graph (detach them for logging).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: unknown {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
    per_scale = per_scale_mean(per_token_BL, schedule)
    k = per_scale.shape[0]
    if weights is None:
        w_K = per_token_BL.new_ones(k)
    elif isinstance(weights, torch.Tensor):
        if weights.shape != (k,):
            raise ValueError(f"scale weights have shape {tuple(weights.shape)}, the schedule has {k} scales")
        if bool((weights < 0).any()) or not bool(weights.sum() > 0):
            raise ValueError("scale weights must be non-negative with a positive sum")
        w_K = weights.to(per_token_BL)
    else:
        w_K = per_scale_weights(weights, schedule).to(per_token_BL)
    if reduction == "per_token":
        w_L = w_K[scale_ids(schedule, per_token_BL.device)]
        loss = (per_token_BL * w_L).sum(-1).div(per_token_BL.shape[1]).mean()
    else:
        loss = (per_scale * w_K).sum() / w_K.sum()
    return loss, per_scale
