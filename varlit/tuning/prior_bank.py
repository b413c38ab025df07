"""The prior bank: teacher samples of the class prompts, drawn once and stored on disk for prior distillation.

Layout of `root/`: `index.json` (format, config hash, the identity it was built for, sizes, finished
shards) and `shard-00000.safetensors`, ... with `prompt_index` int64 [n], `bits` uint8 [n, L, d],
`x_wo_prefix` float32 [n, L-1, d] and `logits` [n, L, 2d]. Every file is written to a temporary name
in `root/` and moved into place with os.replace, shard first, index after, so a killed build leaves
only finished shards in the index and a rerun continues with the next one.

Sample i uses class prompt i % num_prompts. Shard k is drawn with its own generator seeded from
(seed, k), so a resumed build stores exactly what an uninterrupted one would.

Precision: bits and prompt indices are exact; the next-scale inputs are float32 (exact, so the student
sees the teacher's inputs bit for bit); the teacher logits are stored as `logits_dtype` (float16 by
default: 11 significant bits, about 3 decimal digits, range +-65504, checked when written; bfloat16 keeps
only 8 bits; float32 is exact). Per token of the 2B model (L = 10 521, d = 32) a sample takes
0.34 MB of bits + 1.35 MB of inputs + 1.35 MB of float16 logits, about 3 MB.

Staleness: the index stores a hash of `identity` (whatever the samples depend on: the teacher checkpoint,
schedule, sampling settings, prompts; the caller supplies it) together with the number of prompts, shard
size, seed and logits dtype. A different hash means the bank is stale and `build` starts over.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from varlit.data.cache import tensors_checksum
from varlit.io import atomic_write

FORMAT = 2  # 2: every shard carries a checksum of its tensors
TMP_PREFIX = ".tmp-"  # temporary files of unfinished writes, removed when a build starts
INDEX = "index.json"
LOCK = ".lock"  # held while a build runs, so runs that share one bank draw it once
_SHARD = re.compile(r"^shard-\d{5}\.safetensors$")
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}

SampleFn = Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class PriorBankConfig:
    """Where and how many teacher samples to keep; `batch_size` is per `sample_fn` call."""

    root: str = "prior_bank"
    num_samples: int = 64
    shard_size: int = 16
    batch_size: int = 4
    seed: int = 0
    logits_dtype: str = "float16"

    def validate(self, where: str = "prior_bank") -> None:
        for name in ("num_samples", "shard_size", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{where}.{name}: expected a positive integer, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"{where}.seed: expected a non-negative integer, got {self.seed!r}")
        if self.logits_dtype not in _DTYPES:
            raise ValueError(
                f"{where}.logits_dtype: unknown {self.logits_dtype!r}; choose one of {', '.join(_DTYPES)}"
            )


@dataclass
class PriorBatch:
    """Teacher samples: class prompt index, sampled bits, the student's teacher-forcing inputs, teacher logits."""

    prompt_index_B: torch.Tensor  # int64
    bits_BLd: torch.Tensor  # uint8
    x_BLd_wo_prefix: torch.Tensor  # float32
    logits_BLV: torch.Tensor  # float32 (stored as logits_dtype)


class StaleBankError(RuntimeError, ValueError):
    """The bank on disk was built for other settings, or is not finished."""


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), tmp_prefix=TMP_PREFIX)


def _atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata=metadata), tmp_prefix=TMP_PREFIX)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (created if missing). Sweep runs that share a bank
    (`prior.bank.root` outside the run folder) build it one at a time: the first draws, the others wait
    and then find it complete. Where `fcntl` does not exist (Windows) builds are not serialised."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - POSIX everywhere varlit is tested
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _shard_seed(seed: int, shard: int) -> int:
    digest = hashlib.sha256(f"varlit-prior-bank:{seed}:{shard}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class PriorBank:
    """Teacher samples on disk: `build` fills it (resumably), `__getitem__` / `batch` read it lazily."""

    def __init__(self, cfg: PriorBankConfig, identity: Mapping[str, Any], num_prompts: int):
        cfg.validate()
        if isinstance(num_prompts, bool) or not isinstance(num_prompts, int) or num_prompts < 1:
            raise ValueError(f"prior bank: num_prompts must be a positive integer, got {num_prompts!r}")
        self.cfg = cfg
        self.root = Path(cfg.root)
        self.num_prompts = num_prompts
        settings = {
            "format": FORMAT,
            "identity": dict(identity),
            "num_prompts": num_prompts,
            "shard_size": cfg.shard_size,
            "seed": cfg.seed,
            "logits_dtype": cfg.logits_dtype,
        }
        try:
            self._settings_json = json.dumps(settings, sort_keys=True, separators=(",", ":"))
        except TypeError as err:
            raise ValueError(
                f"prior bank identity must be JSON-serialisable (str, numbers, lists, dicts): {err}"
            ) from None
        self.config_hash = hashlib.sha256(self._settings_json.encode()).hexdigest()
        self._complete = False
        self._verified = False

    # ---- index ---------------------------------------------------------------------------------

    @property
    def index_path(self) -> Path:
        return self.root / INDEX

    def _read_index(self) -> dict[str, Any] | None:
        if not self.index_path.exists():
            return None
        try:
            index = json.loads(self.index_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # unreadable: treated as stale and rebuilt
        return index if isinstance(index, dict) else None

    def _write_index(self, shards: dict[str, Any], shapes: dict[str, int] | None) -> None:
        index = {
            "format": FORMAT,
            "config_hash": self.config_hash,
            "settings": json.loads(self._settings_json),
            "shapes": shapes,
            "shards": shards,
        }
        _atomic_write_bytes(self.index_path, json.dumps(index, indent=1, sort_keys=True).encode())

    def _shard_file(self, k: int) -> Path:
        return self.root / f"shard-{k:05d}.safetensors"

    def _num_shards(self) -> int:
        return -(-self.cfg.num_samples // self.cfg.shard_size)

    def _shard_count(self, k: int) -> int:
        return min(self.cfg.shard_size, self.cfg.num_samples - k * self.cfg.shard_size)

    def _done_shards(self, index: dict[str, Any] | None) -> dict[str, Any]:
        """Finished shards of a current index: listed, of the wanted size, and present on disk."""
        if index is None or index.get("config_hash") != self.config_hash:
            return {}
        done = {}
        for key, info in (index.get("shards") or {}).items():
            k = int(key)
            if (
                k < self._num_shards()
                and info.get("count") == self._shard_count(k)
                and self._shard_file(k).exists()
            ):
                done[key] = info
        return done

    def status(self) -> str:
        """'missing', 'stale' (other settings), 'partial' or 'complete'."""
        index = self._read_index()
        if index is None:
            return "missing"
        if index.get("config_hash") != self.config_hash:
            return "stale"
        return "complete" if len(self._done_shards(index)) == self._num_shards() else "partial"

    # ---- build ---------------------------------------------------------------------------------

    def build(
        self,
        sample_fn: SampleFn,
        device: torch.device | str = "cpu",
        log: Callable[[str], None] = print,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        """Draw the missing shards with `sample_fn(prompt_indices, generator) -> (bits, x_wo_prefix, logits)`.

        Removes the shards of a stale bank first. `device` is the generator's device (the sampler's).
        `warn` (default: `log`) gets one line per damaged shard that is drawn again: progress may be quiet,
        a repair never is.
        """
        self._complete = False
        self.root.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.root / LOCK):
            self._build_locked(sample_fn, device, log, warn or log)

    def _build_locked(
        self,
        sample_fn: SampleFn,
        device: torch.device | str,
        log: Callable[[str], None],
        warn: Callable[[str], None],
    ) -> None:
        for tmp in self.root.glob(f"{TMP_PREFIX}*"):
            tmp.unlink(missing_ok=True)
        index = self._read_index()
        if index is not None and index.get("config_hash") != self.config_hash:
            log(f"prior bank {self.root}: built for other settings, rebuilding")
            self._clear()
            index = None
        shards = self._done_shards(index)
        for key in list(shards):  # a damaged shard (truncated, garbled, numbers changed) is drawn again
            problem = self._shard_problem(int(key))
            if problem:
                warn(f"prior bank shard {self._shard_file(int(key))} is {problem}: drawing it again")
                self._shard_file(int(key)).unlink(missing_ok=True)
                del shards[key]
        shapes = index.get("shapes") if index is not None and shards else None
        todo = [k for k in range(self._num_shards()) if str(k) not in shards]
        if todo:
            log(
                f"prior bank {self.root}: {len(shards)} of {self._num_shards()} shards present, drawing {len(todo)}"
            )
        for k in todo:
            tensors, shapes = self._draw_shard(k, sample_fn, torch.device(device), shapes)
            meta = {"config_hash": self.config_hash, "shard": str(k), "checksum": tensors_checksum(tensors)}
            _atomic_save_tensors(self._shard_file(k), tensors, meta)
            shards[str(k)] = {"file": self._shard_file(k).name, "count": self._shard_count(k)}
            self._write_index(shards, shapes)
        if not todo and (index is None or index.get("shards") != shards):
            self._write_index(shards, shapes)
        self._verified = True

    def _shard_problem(self, k: int) -> str | None:
        """Why shard k cannot be used (unreadable, other settings, checksum mismatch), or None."""
        path = self._shard_file(k)
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except Exception as err:  # safetensors raises its own types for truncated or garbled files
            return f"unreadable ({type(err).__name__})"
        if meta.get("config_hash") != self.config_hash:
            return "written for other settings"
        if meta.get("checksum") != tensors_checksum(tensors):
            return "checksum mismatch (corrupted contents)"
        return None

    def verify(self) -> None:
        """Check every shard's checksum once; a bad one is named (build() redraws it)."""
        if self._verified:
            return
        for k in range(self._num_shards()):
            problem = self._shard_problem(k)
            if problem:
                raise StaleBankError(
                    f"prior bank shard {self._shard_file(k)} is {problem}; run again to redraw it "
                    f"(or delete {self.root})"
                )
        self._verified = True

    def _clear(self) -> None:
        for f in self.root.iterdir():
            if _SHARD.match(f.name):
                f.unlink()
        self.index_path.unlink(missing_ok=True)

    def _draw_shard(
        self, k: int, sample_fn: SampleFn, device: torch.device, shapes: dict[str, int] | None
    ) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        gen = torch.Generator(device=device).manual_seed(_shard_seed(self.cfg.seed, k))
        start, count = k * self.cfg.shard_size, self._shard_count(k)
        prompt_idx = torch.arange(start, start + count) % self.num_prompts
        parts: dict[str, list[torch.Tensor]] = {"bits": [], "x_wo_prefix": [], "logits": []}
        for b0 in range(0, count, self.cfg.batch_size):
            idx = prompt_idx[b0 : b0 + self.cfg.batch_size]
            bits, x, logits = sample_fn(idx.to(device), gen)
            shapes = self._check_sample(idx.shape[0], bits, x, logits, shapes)
            parts["bits"].append(bits.detach().to("cpu", torch.uint8))
            parts["x_wo_prefix"].append(x.detach().to("cpu", torch.float32))
            stored = logits.detach().to("cpu", _DTYPES[self.cfg.logits_dtype])
            if not bool(torch.isfinite(stored).all()):
                raise ValueError(
                    f"prior bank: teacher logits are not finite as {self.cfg.logits_dtype} "
                    "(overflow?); use logits_dtype bfloat16 or float32"
                )
            parts["logits"].append(stored)
        tensors = {name: torch.cat(ts) for name, ts in parts.items()}
        tensors["prompt_index"] = prompt_idx.to(torch.int64)
        return tensors, shapes

    @staticmethod
    def _check_sample(
        n: int, bits: torch.Tensor, x: torch.Tensor, logits: torch.Tensor, shapes: dict[str, int] | None
    ) -> dict[str, int]:
        if bits.dim() != 3 or bits.shape[0] != n:
            raise ValueError(f"sample_fn: bits must be [{n}, L, d], got {tuple(bits.shape)}")
        _, L, d = bits.shape
        if tuple(x.shape) != (n, L - 1, d):
            raise ValueError(f"sample_fn: x_wo_prefix must be [{n}, {L - 1}, {d}], got {tuple(x.shape)}")
        if tuple(logits.shape) != (n, L, 2 * d):
            raise ValueError(f"sample_fn: logits must be [{n}, {L}, {2 * d}], got {tuple(logits.shape)}")
        if bits.dtype.is_floating_point or bool((bits > 1).any()) or bool((bits < 0).any()):
            raise ValueError("sample_fn: bits must be integer 0/1 labels")
        got = {"L": L, "d": d}
        if shapes is not None and shapes != got:
            raise ValueError(f"sample_fn: sample sizes changed from {shapes} to {got}")
        return got

    # ---- read ----------------------------------------------------------------------------------

    def _ready(self) -> None:
        if self._complete:
            return
        status = self.status()
        if status != "complete":
            raise StaleBankError(f"prior bank {self.root} is {status}; call build() first")
        self.verify()
        self._complete = True

    def __len__(self) -> int:
        return self.cfg.num_samples

    def __getitem__(self, i: int) -> PriorBatch:
        """Sample i as a batch of one."""
        return self.batch([i])

    def batch(self, indices: Sequence[int] | torch.Tensor) -> PriorBatch:
        """Samples in the given order, read lazily from their shards (CPU tensors)."""
        self._ready()
        idx = [int(i) for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices)]
        if not idx:
            raise ValueError("prior bank: empty index list")
        for i in idx:
            if not 0 <= i < self.cfg.num_samples:
                raise IndexError(f"prior bank: sample {i} out of range 0-{self.cfg.num_samples - 1}")
        names = ("prompt_index", "bits", "x_wo_prefix", "logits")
        by_shard: dict[int, list[tuple[int, int]]] = {}
        for pos, i in enumerate(idx):
            by_shard.setdefault(i // self.cfg.shard_size, []).append((pos, i % self.cfg.shard_size))
        out: dict[str, list[torch.Tensor | None]] = {name: [None] * len(idx) for name in names}
        for k, members in by_shard.items():
            with safe_open(self._shard_file(k), framework="pt") as f:
                if (f.metadata() or {}).get("config_hash") != self.config_hash:
                    raise StaleBankError(f"prior bank shard {self._shard_file(k)} belongs to other settings")
                for name in names:
                    sl = f.get_slice(name)
                    for pos, r in members:
                        out[name][pos] = sl[r : r + 1]
        cat = {name: torch.cat(ts) for name, ts in out.items()}
        return PriorBatch(cat["prompt_index"], cat["bits"], cat["x_wo_prefix"], cat["logits"].float())

    def describe(self) -> dict[str, Any]:
        """Loggable summary: settings hash, size, status."""
        return {
            "root": str(self.root),
            "config_hash": self.config_hash,
            "status": self.status(),
            **asdict(self.cfg),
        }


class InMemoryPriorBank:
    """Bank samples held in (device) memory: the same `len` / `batch(indices)` as `PriorBank`."""

    def __init__(self, samples: PriorBatch):
        self.samples = samples

    def __len__(self) -> int:
        return self.samples.bits_BLd.shape[0]

    def batch(self, indices: torch.Tensor) -> PriorBatch:
        s = self.samples
        idx = indices.to(s.bits_BLd.device)
        return PriorBatch(s.prompt_index_B[idx], s.bits_BLd[idx], s.x_BLd_wo_prefix[idx], s.logits_BLV[idx])
