"""Safe checkpoint loading: local files or the Hugging Face hub, strict key checks, readable errors.

Released files: `infinity_2b_reg.pth` (plain state dict), `infinity_8b_weights/` (sharded safetensors with
`model.safetensors.index.json`), VAE `.pth` files holding the state dict under 'vae'. Everything goes
through `torch.load(weights_only=True)` or safetensors; nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from .hub import HubUnavailableError, local_only, missing_error

# Buffers that are all-zero by construction and that some published files omit.
OPTIONAL_ZERO_KEYS_SUFFIX = ("zero_k_bias",)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


def resolve(
    spec: str | os.PathLike,
    repo: str,
    what: str = "checkpoint",
    flag: str = "--weights",
    preset: str | None = None,
) -> Path:
    """A local path as is; otherwise a file (or folder) name in the hub repo: from the hub cache, or
    downloaded (with progress) when the hub answers. A miss names the download command and `flag`."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if path.is_absolute() or str(spec).startswith((".", "~")):
        raise CheckpointError(f"{what} not found: {path} (check {flag})")
    from huggingface_hub import hf_hub_download, snapshot_download

    local = local_only()
    try:
        if path.suffix:  # a single file
            return Path(hf_hub_download(repo, str(spec), local_files_only=local))
        folder = snapshot_download(repo, allow_patterns=[f"{spec}/*"], local_files_only=local)
        found = Path(folder) / str(spec)
        if not found.is_dir():
            raise FileNotFoundError(found)
        return found
    except Exception as err:  # the hub raises many types (offline, 404, auth); one message covers them
        if local:
            raise missing_error(repo, str(spec), flag, what, preset) from None
        raise HubUnavailableError(
            f"cannot download {what} {str(spec)!r} from {repo} ({type(err).__name__}: {err}); "
            f"pass a local file with {flag} PATH".split("\n")[0]
        ) from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _load_sharded(folder: Path) -> dict[str, torch.Tensor]:
    index_files = sorted(folder.glob("*.index.json"))
    if not index_files:
        shards = sorted(folder.glob("*.safetensors"))
        if not shards:
            raise CheckpointError(f"{folder}: no *.safetensors shards and no index file")
    else:
        try:
            weight_map = json.loads(index_files[0].read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise CheckpointError(f"{index_files[0]}: not a valid shard index ({err})") from None
        shards = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [s.name for s in shards if not s.exists()]
        if missing:
            raise CheckpointError(f"{folder}: shards listed in the index are missing: {', '.join(missing)}")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(read_state_dict(shard))
    return state


def torch_load(path: str | os.PathLike, mmap: bool = True):
    """`torch.load` that never unpickles code: memory-mapped for zip files (torch >= 1.6), a plain read for
    the legacy (non-zip) format, which cannot be memory-mapped but loads with weights_only=True all the same."""
    import zipfile

    legacy = not zipfile.is_zipfile(path)
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and not legacy)


def read_state_dict(path: str | os.PathLike, subkey: str | None = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint file or sharded folder into a flat {name: tensor} dict on CPU."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.is_dir():
            state = _load_sharded(path)
        elif path.suffix == ".safetensors":
            state = _load_safetensors(path)
        elif path.name.endswith(".index.json"):
            state = _load_sharded(path.parent)
        else:
            state = torch_load(path)
    except CheckpointError:
        raise
    except Exception as err:  # truncated zips, bad headers, pickles with forbidden globals ...
        raise CheckpointError(
            f"{path}: cannot read checkpoint ({type(err).__name__}: {err})".split("\n")[0]
        ) from None
    if subkey is not None and isinstance(state, dict) and subkey in state and isinstance(state[subkey], dict):
        state = state[subkey]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    return state


def check_finite(tensors: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights holding inf or NaN (a diverged run's output), naming the file and the first bad tensor."""
    bad = [
        name
        for name, t in tensors.items()
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise CheckpointError(f"{source}: tensor {bad[0]}{more} holds non-finite values (NaN or inf)")


def _fmt(keys: Iterable[str], limit: int = 12) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_keys(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Strict comparison; returns the optional zero buffers absent from `state`, raises on anything else."""
    expected = module.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in state]
    optional = [k for k in missing if k.endswith(OPTIONAL_ZERO_KEYS_SUFFIX)]
    missing = [k for k in missing if k not in optional]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or misshaped:
        parts = [
            f"{len(v)} {name} (first: {v[0]})"
            for name, v in (("missing", missing), ("unexpected", unexpected), ("wrong shapes", misshaped))
            if v
        ]
        lines = [f"{source} does not fit {type(module).__name__}: {'; '.join(parts)}"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_fmt(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_fmt(unexpected)}")
        if misshaped:
            lines.append(f"  wrong shapes ({len(misshaped)}): {_fmt(misshaped, 6)}")
        raise CheckpointError("\n".join(lines))
    return optional


def load_into(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Strictly load `state` into `module` (which may live on the meta device), casting floats to `dtype`."""
    optional = check_keys(module, state, source)
    check_finite(state, source)
    device = torch.device(device or "cpu")
    expected = module.state_dict(keep_vars=True)
    full = {}
    for k, ref in expected.items():
        t = state[k] if k in state else torch.zeros(ref.shape, dtype=ref.dtype)
        target_dtype = (
            dtype
            if (dtype is not None and t.is_floating_point())
            else (ref.dtype if k in optional else t.dtype)
        )
        full[k] = t.to(device=device, dtype=target_dtype)
    module.load_state_dict(full, strict=True, assign=True)
    return module


def unwrap_vae_keys(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept VAE files that name convs/norms without the `.conv` / `.norm` wrapper level."""
    expected = module.state_dict(keep_vars=True)
    out = dict(state)
    for k in expected:
        if k in out:
            continue
        plain = re.sub(r"\.(conv|norm)\.(weight|bias)$", r".\2", k)
        if plain != k and plain in out:
            out[k] = out.pop(plain)
    return out


def load_checkpoint(
    module: nn.Module,
    spec: str | os.PathLike,
    repo: str,
    subkey: str | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    flag: str = "--weights",
    preset: str | None = None,
) -> nn.Module:
    what = "VAE checkpoint" if flag.endswith("vae_weights") else "transformer checkpoint"
    path = resolve(spec, repo, what, flag, preset)
    state = read_state_dict(path, subkey)
    if subkey == "vae":
        state = unwrap_vae_keys(module, state)
    return load_into(module, state, str(path), dtype=dtype, device=device)


__all__ = [
    "CheckpointError",
    "HubUnavailableError",
    "check_keys",
    "load_checkpoint",
    "load_into",
    "read_state_dict",
    "resolve",
    "torch_load",
]
