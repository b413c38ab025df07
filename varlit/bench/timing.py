"""Timers and memory trackers: medians of wall time after warm-up (`torch.cuda.synchronize` around every timed
call on GPU), the CUDA allocator's peak or the process's resident high-water mark."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch


@dataclass
class Timing:
    median_s: float
    min_s: float
    runs_s: list[float]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: torch.device, warmup: int, steps: int) -> Timing:
    """Median wall time of `steps` calls after `warmup` untimed ones."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    for _ in range(warmup):
        fn()
    _sync(device)
    runs = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        runs.append(time.perf_counter() - t0)
    return Timing(statistics.median(runs), min(runs), [round(t, 6) for t in runs])


@dataclass
class Memory:
    peak_gb: float | None = None  # CUDA allocator peak over the measured block
    start_gb: float | None = None  # allocated when the block began (weights, optimizer state, ...)
    process_max_rss_gb: float | None = None  # CPU: the process's resident high-water mark so far


@contextmanager
def track_memory(device: torch.device) -> Iterator[Memory]:
    mem = Memory()
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        mem.start_gb = torch.cuda.memory_allocated(device) / 2**30
    yield mem
    if device.type == "cuda":
        _sync(device)
        mem.peak_gb = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        mem.process_max_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _memory_fields(mem: Memory) -> dict:
    return {k: (round(v, 3) if v is not None else None) for k, v in asdict(mem).items() if v is not None}
