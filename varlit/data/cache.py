"""On-disk cache of frozen-encoder outputs (VAE features and bits, T5 features), one safetensors file per entry.

An entry's key hashes everything its content depends on (file content, pixel budget, resolution, encoder
fingerprint, this module's format version), so runs and sweeps that agree on those reuse it and anything else
misses. Writes are atomic (temporary file in the same folder, then `os.replace`), so a crash never leaves a
half-written entry under a real name. Every entry carries a SHA-256 of its tensors; an entry that fails to
open, has the wrong tensors or shapes, or fails its checksum is logged, deleted and reported as a miss so the
caller rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from varlit.io import atomic_write

log = logging.getLogger(__name__)

#: Bump when what an entry holds, or how it is computed, changes: old entries then simply stop matching.
CACHE_VERSION = "1"

_META_CHECKSUM = "varlit_checksum"
_META_VERSION = "varlit_cache_version"
_META_KEY = "varlit_key"

#: Expected (shape, dtype) of each tensor of an entry; a shape entry of -1 accepts any size on that axis.
Spec = Mapping[str, tuple[tuple[int, ...], torch.dtype]]


def cache_key(**parts: object) -> str:
    """Stable hex key of JSON-serialisable parts, plus the cache format version."""
    payload = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def tensors_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def module_fingerprint(module: nn.Module, samples_per_tensor: int = 1024) -> str:
    """A cheap identity for frozen weights: names, shapes and a strided sample of every tensor's values.

    Used when the caller gives no checkpoint id, so that two randomly initialised encoders (tests) or two
    checkpoints never share cache entries, without hashing gigabytes of T5 weights on every run.
    """
    digest = hashlib.sha256(type(module).__name__.encode())
    state = module.state_dict()
    for name in sorted(state):
        t = state[name].detach()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        flat = t.reshape(-1)
        if flat.numel():
            step = max(1, flat.numel() // samples_per_tensor)
            digest.update(flat[::step][:samples_per_tensor].to("cpu", torch.float64).numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class CacheStats:
    """Counters so callers and tests can see what a run did: `misses` entries were (re)built."""

    hits: int = 0
    misses: int = 0
    corrupt: int = 0


class TensorCache:
    """Entries under `root/<kind>/<key[:2]>/<key>.safetensors`."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self.stats = CacheStats()

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.safetensors"

    def load(self, kind: str, key: str, spec: Spec) -> dict[str, torch.Tensor] | None:
        """The entry's tensors, or None (a miss) when absent or corrupt; corrupt files are removed."""
        path = self.path(kind, key)
        if not path.exists():
            self.stats.misses += 1
            return None
        problem = None
        tensors: dict[str, torch.Tensor] = {}
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open has no iter)
        except Exception as err:  # safetensors raises its own error type and OSError for truncated files
            problem = f"unreadable ({err.__class__.__name__}: {err})"
        if problem is None:
            problem = self._check(meta, key, tensors, spec)
        if problem is None:
            self.stats.hits += 1
            return tensors
        log.warning("cache entry %s is corrupt (%s); rebuilding it", path, problem)
        path.unlink(missing_ok=True)
        self.stats.corrupt += 1
        self.stats.misses += 1
        return None

    @staticmethod
    def _check(
        meta: Mapping[str, str], key: str, tensors: Mapping[str, torch.Tensor], spec: Spec
    ) -> str | None:
        if meta.get(_META_VERSION) != CACHE_VERSION or meta.get(_META_KEY) != key:
            return f"written for version/key {meta.get(_META_VERSION)}/{meta.get(_META_KEY)}"
        if set(tensors) != set(spec):
            return f"holds tensors {sorted(tensors)}, expected {sorted(spec)}"
        for name, (shape, dtype) in spec.items():
            t = tensors[name]
            if (
                t.dtype != dtype
                or len(t.shape) != len(shape)
                or any(want not in (-1, got) for want, got in zip(shape, t.shape))
            ):
                return f"tensor {name} is {t.dtype}{list(t.shape)}, expected {dtype}{list(shape)}"
        if tensors_checksum(tensors) != meta.get(_META_CHECKSUM):
            return "checksum mismatch"
        return None

    def save(self, kind: str, key: str, tensors: Mapping[str, torch.Tensor], note: str = "") -> Path:
        """Write an entry atomically; `note` (e.g. the source file) is kept in the metadata for humans."""
        path = self.path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        cpu = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        meta = {
            _META_CHECKSUM: tensors_checksum(cpu),
            _META_VERSION: CACHE_VERSION,
            _META_KEY: key,
            "note": note,
        }
        atomic_write(path, lambda tmp: save_file(cpu, tmp, metadata=meta))
        return path
