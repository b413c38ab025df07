"""Divergence: a non-finite loss or gradient stops training at once, with one line saying where.

A NaN step is never recovered from (AdamW spreads it into every moment), so continuing only produces an
all-NaN adapter or a crash much later in the sampler. Each check costs one device sync per step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from ..models.loading import check_finite as check_finite_tensors

__all__ = ["DivergenceError", "check_finite_tensors", "check_gradients", "check_losses"]


class DivergenceError(ValueError):
    """Training produced a non-finite loss or gradient."""


def _hint(lr: float | None) -> str:
    lr_text = f"lr {lr:g}" if lr is not None else "lr unknown"
    return f"({lr_text}); lower --model.optim.lr or set --model.optim.grad_clip, and check the prior bank and photos"


def check_losses(step: int, losses: Mapping[str, torch.Tensor], lr: float | None) -> None:
    """Raise at the first non-finite loss, naming it."""
    if not losses:
        return
    values = torch.stack([v.detach().float().reshape(()) for v in losses.values()])
    if bool(torch.isfinite(values).all()):
        return
    for (name, _), value in zip(losses.items(), values.tolist()):
        if not torch.isfinite(torch.tensor(value)):
            raise DivergenceError(f"training diverged at step {step}: the {name} loss is {value} {_hint(lr)}")


def check_gradients(step: int, params: Iterable[torch.Tensor], source: str, lr: float | None) -> None:
    """Raise when any gradient holds inf or NaN (`source` names the loss it came from)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)  # one small kernel per tensor, one sync for all of them
    total = torch.stack([n.float() for n in norms])
    if bool(torch.isfinite(total).all()):
        return
    raise DivergenceError(
        f"training diverged at step {step}: the gradient of the {source} loss is not finite {_hint(lr)}"
    )
