"""Subject adapters: the tuned tensors, the subject embedding and the run's config in one safetensors file.

An adapter is data: this module writes, reads, checks and describes adapter files and returns plain values
(tensors, the LoRA plan, the subject vectors and what the header records). Applying one to a model is the
pipeline's work (`Pipeline.load_adapter` / `apply_adapter`): the base model is not in the file, the pipeline
puts the tensors onto an already loaded base, so one in-memory base serves many subjects
(`Pipeline.restore_base` undoes an adapter without reloading anything).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..io import atomic_write
from ..models.loading import CheckpointError
from .adapter_base import check_dtypes, check_full, check_lora
from .divergence import check_finite_tensors
from .lora import LoraPlan, check_fits, check_lora_tensors
from .subject_embedding import PLACEHOLDER

log = logging.getLogger(__name__)

FORMAT = "varlit-adapter/1"
EMBEDDING_KEY = "subject_embedding.vectors"
MODEL_PREFIX = "model."


@dataclass
class Adapter:
    tensors: dict[str, torch.Tensor]  # student names (no prefix) -> tuned values
    subject_vectors: torch.Tensor | None
    meta: dict[str, Any]
    path: Path | None = None  # the file it was read from (named in every error about it)


def save_adapter(
    path: str | os.PathLike,
    model_tensors: dict[str, torch.Tensor],
    subject_vectors: torch.Tensor | None,
    meta: dict[str, Any],
    dtype: torch.dtype | None = None,
) -> Path:
    """Tuned tensors in their training dtype, or cast to `dtype` (bf16 halves the file; see docs/adapters.md)."""
    tensors = {
        MODEL_PREFIX + k: v.detach().to("cpu", dtype if dtype is not None else v.dtype).contiguous()
        for k, v in model_tensors.items()
    }
    if subject_vectors is not None:
        tensors[EMBEDDING_KEY] = subject_vectors.detach().to("cpu", torch.float32).contiguous()
    check_finite_tensors(tensors, f"adapter {path} not written")  # a diverged run never leaves one behind
    # What the file must hold, so a reader can tell a damaged or foreign file from a complete one.
    meta = {**meta, "tensors": sorted(model_tensors), "subject_vectors": subject_vectors is not None}
    header = {"format": FORMAT, "meta": json.dumps(meta, default=str)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def _open(path: Path):
    if not path.exists():
        raise CheckpointError(f"adapter not found: {path}")
    try:
        return safe_open(str(path), framework="pt")
    except Exception as err:  # safetensors raises its own error types for truncated/garbled files
        raise CheckpointError(f"{path}: cannot read adapter ({type(err).__name__}: {err})") from None


def _meta(path: Path, header: dict[str, str]) -> dict[str, Any]:
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a varlit adapter (format {header.get('format')!r})")
    try:
        meta = json.loads(header.get("meta", "{}"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: adapter metadata is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: adapter metadata is not a JSON object")
    return meta


def read_adapter_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The adapter's config only (header, no tensors): a cheap check before any work starts."""
    path = Path(path)
    with _open(path) as f:
        return _meta(path, f.metadata() or {})


def read_adapter(path: str | os.PathLike) -> Adapter:
    path = Path(path)
    with _open(path) as f:
        meta = _meta(path, f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model = {k[len(MODEL_PREFIX) :]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    check_contents(path, meta, model, tensors)
    return Adapter(model, tensors.get(EMBEDDING_KEY), meta, path)


def _listing(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")


def check_contents(
    path: Path, meta: dict[str, Any], model: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]
) -> None:
    """Refuse damaged or foreign adapters by name: unknown tensors, missing tensors, non-finite values,
    subject vectors that training had but the file lacks."""
    unknown = sorted(k for k in tensors if not k.startswith(MODEL_PREFIX) and k != EMBEDDING_KEY)
    listed = meta.get("tensors")
    if isinstance(listed, list):
        unknown += sorted(MODEL_PREFIX + k for k in model if k not in set(listed))
        missing = sorted(k for k in listed if k not in model)
    else:  # adapters written before the list: the freeze summary still has the count
        count = (meta.get("freeze") or {}).get("freeze/num_trainable_tensors")
        missing = (
            [f"{count - len(model)} of {count}"] if isinstance(count, int) and count > len(model) else []
        )
    if unknown:
        raise CheckpointError(f"{path}: adapter holds unknown tensors: {_listing(unknown)}")
    if missing:
        raise CheckpointError(
            f"{path}: adapter is missing {len(missing) if isinstance(listed, list) else missing[0]} of its "
            f"tuned tensors" + (f": {_listing(missing)}" if isinstance(listed, list) else "")
        )
    check_dtypes(path, tensors)
    check_finite_tensors(tensors, f"adapter {path}")
    had_vectors = meta.get("subject_vectors")
    if had_vectors is None:
        had_vectors = bool((meta.get("freeze") or {}).get("freeze/subject_embedding"))
    if had_vectors and EMBEDDING_KEY not in tensors:
        raise CheckpointError(f"{path}: adapter is missing its subject vectors ({EMBEDDING_KEY})")


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def base_fingerprint(model: torch.nn.Module, exclude: set[str], samples_per_tensor: int = 256) -> str:
    """Identity of a base model's frozen tensors (those an adapter does not replace): names, shapes and a
    strided sample of values rounded to bfloat16, so a float32 and a bfloat16 copy of one base agree."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            if name in exclude or not t.is_floating_point():
                continue
            flat = t.reshape(-1)
            step = max(1, flat.numel() // samples_per_tensor)
            sample = flat[::step][:samples_per_tensor].to("cpu", torch.bfloat16).float()
            digest.update(f"{name}|{tuple(t.shape)}|".encode())
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def check_fits_base(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Every tuned tensor is a tensor of the base model, of the base's shape."""
    own = dict(model.named_parameters()) | dict(model.named_buffers())
    unknown = [k for k in tensors if k not in own]
    bad = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in tensors.items()
        if k in own and v.shape != own[k].shape
    ]
    if unknown or bad:
        raise CheckpointError(
            f"{source} does not fit this base model: "
            + "; ".join(
                filter(
                    None,
                    [
                        f"unknown tensors: {', '.join(unknown[:5])}" if unknown else "",
                        f"wrong shapes: {', '.join(bad[:5])}" if bad else "",
                    ],
                )
            )
        )


def adapter_type(meta: dict[str, Any]) -> str:
    """full (tuned tensors replace the base's) or lora (low-rank updates merged into the base)."""
    entry = meta.get("adapter")
    return str(entry.get("type", "full")) if isinstance(entry, dict) else "full"


def check_target(adapter: Adapter, preset: str) -> str:
    """The adapter's type (full or lora); refused when the type is unknown or it was trained on another preset
    than `preset` (the pipeline's)."""
    path = adapter.path
    kind = adapter_type(adapter.meta)
    if kind not in ("full", "lora"):
        raise CheckpointError(f"{path}: unknown adapter type {kind!r} (full or lora)")
    base = adapter.meta.get("preset")
    if base and base != preset:
        raise CheckpointError(f"{path}: adapter was trained on preset {base!r}, the pipeline is {preset!r}")
    return kind


def check_base(adapter: Adapter, model: torch.nn.Module, depth: int) -> LoraPlan | None:
    """Whether the adapter fits `model`, a base of `depth` blocks with no adapter applied: its fingerprint
    (the base it was trained on), then what it must hold on this base (the recorded freeze spec's tensors
    and their shapes; the LoRA targets, ranks and alphas). Returns the LoRA plan to merge (lora), or None."""
    path, kind = adapter.path, adapter_type(adapter.meta)
    trained_on = adapter.meta.get("base_fingerprint")
    if trained_on:
        here = base_fingerprint(model, set() if kind == "lora" else set(adapter.tensors))
        if here != trained_on:
            raise CheckpointError(
                f"{path}: adapter was trained on another base model (weights {adapter.meta.get('weights')!r}, "
                f"fingerprint {trained_on}; this base: {here}); leave the base-model flags out (sample: "
                "--weights, --init_seed; eval: --model.*) to load the base it records"
            )
    else:
        _warn_once(f"fp:{path}", f"{path}: adapter records no base fingerprint; cannot check its base model")
    if kind == "lora":
        plan = LoraPlan.from_meta(adapter.meta["adapter"], str(path))
        check_lora_tensors(path, plan, adapter.tensors)
        check_fits(path, plan, model, adapter.tensors)
        check_lora(path, adapter.meta, model, depth, plan)
        return plan
    check_fits_base(model, adapter.tensors, str(path))
    check_full(path, adapter.meta, model, depth, set(adapter.tensors))
    return None


def subject_of(adapter: Adapter) -> tuple[torch.Tensor | None, str | None]:
    """The subject vectors and the placeholder they stand for, or (None, None) for an adapter without vectors
    (warned once, unless it is a rare-token adapter, which has none by design)."""
    if adapter.subject_vectors is not None:
        return adapter.subject_vectors, adapter.meta.get("placeholder", PLACEHOLDER)
    data = adapter.meta.get("data") if isinstance(adapter.meta.get("data"), dict) else {}
    if not data.get("identifier"):
        _warn_once(
            f"nv:{adapter.path}",
            f"{adapter.path}: adapter has no subject vectors; {PLACEHOLDER} in prompts is plain text",
        )
    return None, None
