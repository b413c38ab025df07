"""`summary.json` in the run folder: what sweeps compare besides quality (trainable parameters, time per
step, peak memory, adapter size, final losses). Written atomically at the end of training."""

from __future__ import annotations

import time

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only

from ..io import atomic_write_json
from .adapter import AdapterCheckpoint
from .run_dir import run_dir


def adapter_bytes(trainer: pl.Trainer) -> int | None:
    """Size of the run's adapter file (the final one when AdapterCheckpoint has written it, else the newest
    intermediate one: every adapter of a run has the same tensors, so the same size)."""
    for cb in trainer.callbacks:
        if isinstance(cb, AdapterCheckpoint) and cb.last_path is not None and cb.last_path.exists():
            return cb.last_path.stat().st_size
    return None


class RunSummary(pl.Callback):
    def __init__(self, skip_first_steps: int = 1):
        self.skip_first_steps = skip_first_steps  # warm-up steps left out of the timing
        self._t0: float | None = None
        self._timed_steps = 0
        self._time = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._t0 is None:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        if trainer.global_step > self.skip_first_steps:
            self._time += time.perf_counter() - self._t0
            self._timed_steps += 1

    @rank_zero_only
    def on_train_end(self, trainer, pl_module) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        total = sum(p.numel() for p in pl_module.parameters())
        peak = torch.cuda.max_memory_allocated(pl_module.device) if pl_module.device.type == "cuda" else None
        atomic_write_json(
            run_dir(trainer) / "summary.json",
            {
                "steps": int(trainer.global_step),
                "trainable_params": int(trainable),
                "total_params": int(total),
                "sec_per_step": self._time / self._timed_steps if self._timed_steps else None,
                "peak_memory_bytes": peak,
                "adapter_bytes": adapter_bytes(trainer),
                "device": str(pl_module.device),
                "final": metrics,
            },
        )
