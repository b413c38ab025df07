"""What an adapter must hold, derived from the base model it is applied to, never from the file's own word.

An adapter's metadata (its tensor list, fingerprint, LoRA ranks) can be edited or stripped along with its
tensors, so it cannot vouch for them. The expected tensors come from the base: the freeze spec the run
trained with, resolved on this base model, gives the exact names (full) or LoRA targets, ranks and alphas
(lora); the base's own tensors give the shapes. Without a recorded spec, the tensors of a block must still
form whole (block, kind) groups of the base: half a group is a damaged file, not a freeze spec.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.loading import CheckpointError
from .freeze import FreezeConfig, classify, resolve_for_model
from .lora import MAX_ALPHA, AdapterConfig, LoraPlan, plan_lora, validate_adapter


def _listing(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")


def check_dtypes(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Tuned tensors and subject vectors are floating point (an int tensor would be cast silently)."""
    bad = sorted(
        f"{k} ({str(v.dtype).removeprefix('torch.')})"
        for k, v in tensors.items()
        if not v.is_floating_point()
    )
    if bad:
        raise CheckpointError(f"{path}: adapter tensors must be floating point; found {_listing(bad)}")


def recorded_freeze(meta: Mapping[str, Any], path: Path) -> FreezeConfig | None:
    """The freeze spec the run trained with (`hparams.freeze`), or None when the file records none."""
    hp = meta.get("hparams")
    entry = hp.get("freeze") if isinstance(hp, Mapping) else None
    if entry is None:
        return None
    try:
        return FreezeConfig(**entry)
    except TypeError as err:
        raise CheckpointError(f"{path}: adapter's recorded freeze spec is not valid ({err})") from None


def _recorded_adapter(meta: Mapping[str, Any], path: Path) -> AdapterConfig | None:
    hp = meta.get("hparams")
    entry = hp.get("adapter") if isinstance(hp, Mapping) else None
    if entry is None:
        return None
    try:
        cfg = AdapterConfig(**entry)
        validate_adapter(cfg, "adapter")
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: adapter's recorded LoRA settings are not valid ({err})") from None
    return cfg


def _resolve(spec: FreezeConfig, model: nn.Module, depth: int, path: Path):
    try:
        return resolve_for_model(spec, model, depth, where="freeze")
    except ValueError as err:
        raise CheckpointError(f"{path}: adapter's freeze spec does not fit this base model ({err})") from None


def check_full(path: Path, meta: Mapping[str, Any], model: nn.Module, depth: int, names: set[str]) -> None:
    """The tuned tensors are exactly what the recorded freeze spec trains on this base (or whole groups)."""
    spec = recorded_freeze(meta, path)
    if spec is not None:
        expected = set(_resolve(spec, model, depth, path).trainable)
        missing, unknown = sorted(expected - names), sorted(names - expected)
        if missing or unknown:
            parts = [f"missing {len(missing)}: {_listing(missing)}"] if missing else []
            parts += [f"unexpected {len(unknown)}: {_listing(unknown)}"] if unknown else []
            raise CheckpointError(
                f"{path}: adapter does not hold the tensors its freeze spec trains on this base model "
                f"({'; '.join(parts)})"
            )
        return
    params = [n for n, _ in model.named_parameters()]
    prefix = getattr(model, "block_prefix", None)
    assignment = classify(params, depth, prefix if callable(prefix) else None)
    groups: dict[tuple[int | None, str], set[str]] = {}
    for n, key in assignment.items():
        groups.setdefault(key, set()).add(n)
    partial = []
    # Block groups only: a global kind (embed, head ...) is a mix of unrelated tensors, tuned one by one.
    for key in sorted({assignment[n] for n in names if assignment.get(n, (None,))[0] is not None}, key=str):
        lacking = sorted(groups[key] - names)
        if lacking:
            block = "global" if key[0] is None else f"block {key[0]}"
            partial.append(f"{block} {key[1]} lacks {_listing(lacking)}")
    if partial:
        raise CheckpointError(
            f"{path}: adapter holds only part of a (block, kind) group of this base model: {partial[0]}"
            + (f" (+{len(partial) - 1} more groups)" if len(partial) > 1 else "")
        )


def check_lora(path: Path, meta: Mapping[str, Any], model: nn.Module, depth: int, plan: LoraPlan) -> None:
    """The file's LoRA targets, ranks and alphas are those its recorded settings give on this base."""
    bad_alpha = sorted(t for t, a in plan.alphas.items() if not (math.isfinite(a) and 0 < a <= MAX_ALPHA))
    if bad_alpha:
        t = bad_alpha[0]
        raise CheckpointError(
            f"{path}: LoRA alpha of {t} is {plan.alphas[t]!r}; alphas must be in (0, {MAX_ALPHA:g}]"
        )
    spec, cfg = recorded_freeze(meta, path), _recorded_adapter(meta, path)
    if spec is None or cfg is None:
        return  # targets and shapes are still checked against the base layers (lora.check_fits)
    try:
        want = plan_lora(cfg, _resolve(spec, model, depth, path), model)
    except ValueError as err:
        raise CheckpointError(f"{path}: adapter's LoRA settings do not fit this base model ({err})") from None
    if set(want.targets) != set(plan.targets):
        missing = sorted(set(want.targets) - set(plan.targets))
        unknown = sorted(set(plan.targets) - set(want.targets))
        what = f"missing {_listing(missing)}" if missing else f"unexpected {_listing(unknown)}"
        raise CheckpointError(
            f"{path}: LoRA targets differ from those its freeze spec selects on this base model ({what})"
        )
    for t in want.targets:
        if want.ranks[t] != plan.ranks[t] or want.alphas[t] != plan.alphas[t]:
            raise CheckpointError(
                f"{path}: LoRA layer {t} has rank {plan.ranks[t]} and alpha {plan.alphas[t]:g}, but the "
                f"adapter's settings give rank {want.ranks[t]} and alpha {want.alphas[t]:g}"
            )
