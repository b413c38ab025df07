"""`--ckpt_path`: which file, whether it is a `varlit fit` checkpoint, and whether it fits this run.

The command line (config files and flags) is what a resumed run uses: a checkpoint's saved settings never
overlay it (Lightning's CLI would, silently replacing explicit flags and following paths stored in the file).
Instead a setting that differs from the checkpoint's stops the run with the fields named, except the few that
only change how the run executes (device, recomputation, validation, data loading paths).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .models.loading import CheckpointError, torch_load

log = logging.getLogger(__name__)

# Settings a resume may change: they do not change what is trained.
MODEL_MAY_DIFFER = frozenset(
    {"init_device", "gradient_checkpointing", "val_sampling", "val_seed", "val_class_samples", "frozen_dtype"}
)
DATA_MAY_DIFFER = frozenset(
    {"cache_dir", "num_workers", "dreambench_root", "subject_dir", "val_batch_size", "val_prompts"}
)


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """`last` -> `<run dir>/checkpoints/last.ckpt`; paths as given. A missing `last` is an error, not a fresh
    start: it is most often a mistyped --run.name, and training from scratch in another folder hides that."""
    if ckpt_path != "last":
        return ckpt_path
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        return str(last)
    root = run_dir.parent
    runs = sorted(c.parent.parent.name for c in root.glob("*/checkpoints/last.ckpt"))
    where = (
        f"runs with a checkpoint under {root}: {', '.join(runs[:8])}"
        if runs
        else f"no run under {root} has one"
    )
    raise CheckpointError(
        f"--ckpt_path last: {last} does not exist ({where}); check --run.name / --run.root, or leave "
        "--ckpt_path out to start a new run"
    )


def read_fit_checkpoint(path: str | Path, command: str = "varlit fit") -> dict[str, Any]:
    """Load a Lightning checkpoint of `command` safely (no pickled code), or fail with one line.

    Every tensor is read (no memory map): damaged tensor data fails here, naming the file, and not later
    inside Lightning's restore."""
    p = Path(path).expanduser()
    where = f"--ckpt_path {p}"
    if not p.exists():
        raise CheckpointError(f"{where}: no such file")
    if p.is_dir():
        raise CheckpointError(
            f"{where} is a folder; pass the checkpoint file (e.g. <run dir>/checkpoints/last.ckpt)"
        )
    if p.stat().st_size == 0:
        raise CheckpointError(f"{where} is empty (0 bytes): a write that never finished?")
    try:
        ckpt = torch_load(p, mmap=False)
    except Exception as err:  # truncated zips, random bytes, pickles with forbidden globals ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"{where}: cannot read it ({type(err).__name__}: {first[:200]})") from None
    if (
        not isinstance(ckpt, dict)
        or not isinstance(ckpt.get("state_dict"), dict)
        or "global_step" not in ckpt
    ):
        if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            raise CheckpointError(
                f"{where} is a plain state dict, not a `{command}` checkpoint; base weights go in --model.weights"
            )
        raise CheckpointError(f"{where} is not a `{command}` checkpoint (no state_dict and global_step)")
    return ckpt


def check_fits_module(ckpt: Mapping[str, Any], module: torch.nn.Module, path: str) -> None:
    """Every tensor of the checkpoint exists in the module with the same shape, and none it trains is missing."""
    own = module.state_dict()
    state = ckpt["state_dict"]
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    unknown = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(v.shape)} (this run: {tuple(own[k].shape)})"
        for k, v in state.items()
        if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape
    ]
    missing = [k for k in sorted(_trained_names(module)) if k not in state]
    problems = [
        f"{name}: {', '.join(keys[:3])}" + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
        for name, keys in (
            ("not tensors", not_tensors),
            ("unknown tensors", unknown),
            ("wrong shapes", wrong),
            ("missing tensors", missing),
        )
        if keys
    ]
    if problems:
        raise CheckpointError(f"--ckpt_path {path} does not fit this run's model: {'; '.join(problems)}")


def check_trained_tensors(state: Mapping[str, torch.Tensor], module: torch.nn.Module) -> None:
    """A checkpoint's state dict holds every tensor the module trains, each of this run's shape (the module's
    own check when Lightning restores it; `check_fits_module` reports a whole checkpoint first)."""
    want = _trained_names(module)
    missing = sorted(want - set(state))
    if missing:
        raise ValueError(
            f"checkpoint does not hold the tensors this run trains ({len(missing)} missing, e.g. {missing[0]}); "
            "was it written with another freeze spec or adapter type?"
        )
    own = dict(module.named_parameters())
    for k in sorted(want):
        have, mine = tuple(state[k].shape), tuple(own[k].shape)
        if have == mine:
            continue
        if ".lora_A." in k:  # A is [rank, in]
            raise ValueError(
                f"checkpoint was trained with LoRA rank {have[0]} ({k}), this run has rank {mine[0]} "
                "(adapter.rank / adapter.rank_per_kind): resume with the rank it was started with"
            )
        raise ValueError(f"checkpoint tensor {k} has shape {have}, this run's is {mine}")


def _trained_names(module: torch.nn.Module) -> set[str]:
    """The tensors a fit checkpoint of this module holds: the student's trainable ones and the subject vectors."""
    mask = getattr(module, "mask", None)
    names = {f"student.{k}" for k in getattr(mask, "trainable", ())}
    emb = getattr(module, "subject_embedding", None)
    if emb is not None:
        names |= {f"subject_embedding.{k}" for k, _ in emb.named_parameters()}
    return names


def _flat(d: Any, prefix: str) -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}.{k}"))
        return out
    if isinstance(d, tuple):
        d = list(d)
    return {prefix: d}


def _differences(saved: Mapping[str, Any], now: Mapping[str, Any], section: str, may: frozenset) -> list[str]:
    out = []
    for key in sorted(set(saved) & set(now)):
        if key in may or key.startswith("_"):
            continue
        a, b = _flat(saved[key], f"{section}.{key}"), _flat(now[key], f"{section}.{key}")
        for name in sorted(set(a) | set(b)):
            if a.get(name) != b.get(name):
                out.append(f"{name} is {a.get(name)!r} in the checkpoint, {b.get(name)!r} now")
    return out


def check_settings(
    ckpt: Mapping[str, Any],
    model_hparams: Mapping[str, Any],
    data_hparams: Mapping[str, Any] | None,
    path: str,
) -> None:
    """Stop, naming the fields, when this run's settings differ from those the checkpoint was trained with."""
    diffs = _differences(ckpt.get("hyper_parameters") or {}, dict(model_hparams), "model", MODEL_MAY_DIFFER)
    saved_data = ckpt.get("datamodule_hyper_parameters")
    if saved_data and data_hparams is not None:
        diffs += _differences(saved_data, dict(data_hparams), "data", DATA_MAY_DIFFER)
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise CheckpointError(
            f"--ckpt_path {path} was trained with other settings: {shown}. Resume with the settings it was "
            "trained with, or start a new run (another --run.name) to change them"
        )


def trained_state(state_dict: dict[str, Any], trainable: set[str]) -> dict[str, Any]:
    """What a checkpoint keeps of the module's state: the student's trainable tensors and the subject
    vectors. The frozen base comes back from the preset's weights on resume (see `check_trained_tensors`)."""
    keep = {f"student.{k}" for k in trainable}
    return {k: v for k, v in state_dict.items() if k in keep or k.startswith("subject_embedding.")}
