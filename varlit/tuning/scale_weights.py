"""Scale weights: how much each scale's tokens count in a loss (ARBooth's scale-wise weighted tuning).

Kinds:
- `uniform`: every scale 1.
- `arbooth`: the first `num_coarse` scales get `coarse`, the rest `fine` (released code: 8, 1.0, 0.5).
- `inverse_sqrt_area`: scale s gets sqrt(area_last / area_s), rescaled so the mean *token* weight is 1.
  With the `per_token` reduction this is exactly the official Infinity `reweight_loss_by_scale` option
  (token weights proportional to 1/sqrt(area), normalised to sum to 1 over the tokens).
- `explicit`: `values`, one weight per scale.

Weights are per scale; `per_token_weights` repeats each over its scale's h*w tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

SCALE_WEIGHT_KINDS: tuple[str, ...] = ("uniform", "arbooth", "inverse_sqrt_area", "explicit")


@dataclass
class ScaleWeights:
    """Per-scale loss weights (see the module docstring for the kinds)."""

    kind: str = "arbooth"
    num_coarse: int = 8
    coarse: float = 1.0
    fine: float = 0.5
    values: list[float] | None = None

    def validate(self, num_scales: int | None = None, where: str = "scale_weights") -> None:
        """Raise a ValueError naming the field; with `num_scales`, also check an explicit list's length."""
        if self.kind not in SCALE_WEIGHT_KINDS:
            raise ValueError(
                f"{where}.kind: unknown kind {self.kind!r}; choose one of {', '.join(SCALE_WEIGHT_KINDS)}"
            )
        if self.kind == "arbooth":
            if (
                isinstance(self.num_coarse, bool)
                or not isinstance(self.num_coarse, int)
                or self.num_coarse < 0
            ):
                raise ValueError(
                    f"{where}.num_coarse: expected a non-negative integer, got {self.num_coarse!r}"
                )
            for name in ("coarse", "fine"):
                v = getattr(self, name)
                if not _is_weight(v):
                    raise ValueError(f"{where}.{name}: expected a finite non-negative number, got {v!r}")
            if self.coarse == 0 and self.fine == 0:
                raise ValueError(f"{where}: coarse and fine are both 0, so every scale would be ignored")
        if self.kind == "explicit":
            if (
                self.values is None
                or isinstance(self.values, str)
                or not isinstance(self.values, list | tuple)
            ):
                raise ValueError(f"{where}.values: kind 'explicit' needs a list of per-scale weights")
            for i, v in enumerate(self.values):
                if not _is_weight(v):
                    raise ValueError(f"{where}.values[{i}]: expected a finite non-negative number, got {v!r}")
            if not any(float(v) > 0 for v in self.values):
                raise ValueError(f"{where}.values: every weight is 0, so every scale would be ignored")
            if num_scales is not None and len(self.values) != num_scales:
                raise ValueError(
                    f"{where}.values: {len(self.values)} weights given but the schedule has {num_scales} scales"
                )
        elif self.values is not None:
            raise ValueError(f"{where}.values: only used with kind 'explicit' (kind is {self.kind!r})")


def _is_weight(v: object) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v) and v >= 0


def scale_areas(schedule: Sequence[Sequence[int]]) -> list[int]:
    """Tokens per scale; a schedule entry is (h, w) or the official (t, h, w)."""
    return [math.prod(int(x) for x in hw) for hw in schedule]


def per_scale_weights(weights: ScaleWeights, schedule: Sequence[Sequence[int]]) -> torch.Tensor:
    """[K] float32 weight of every scale of the schedule."""
    areas = scale_areas(schedule)
    k = len(areas)
    weights.validate(num_scales=k)
    if weights.kind == "uniform":
        return torch.ones(k)
    if weights.kind == "arbooth":
        return torch.tensor([weights.coarse if s < weights.num_coarse else weights.fine for s in range(k)])
    if weights.kind == "explicit":
        return torch.tensor([float(v) for v in weights.values], dtype=torch.float32)
    raw = torch.tensor([math.sqrt(areas[-1] / a) for a in areas], dtype=torch.float64)
    counts = torch.tensor(areas, dtype=torch.float64)
    raw = raw * counts.sum() / (raw * counts).sum()  # mean token weight 1
    return raw.float()


def per_token_weights(
    weights: ScaleWeights | torch.Tensor, schedule: Sequence[Sequence[int]]
) -> torch.Tensor:
    """[L] float32 weight of every token (its scale's weight), scales concatenated coarse to fine."""
    w_K = weights if isinstance(weights, torch.Tensor) else per_scale_weights(weights, schedule)
    areas = scale_areas(schedule)
    if w_K.shape != (len(areas),):
        raise ValueError(f"scale weights have shape {tuple(w_K.shape)}, the schedule has {len(areas)} scales")
    return torch.repeat_interleave(w_K.float(), torch.tensor(areas, device=w_K.device))
