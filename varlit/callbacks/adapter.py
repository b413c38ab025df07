"""Writes the subject adapter (tuned tensors + subject vectors + config) at the end of training and every
`every_n_steps`, atomically; the adapter is what `varlit sample` and `varlit eval` load on a base model."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only

from .run_dir import run_dir

# "same": the tuned tensors' training dtype (float32 master weights by default: lossless).
ADAPTER_DTYPES = {"same": None, "float32": torch.float32, "bfloat16": torch.bfloat16}


class AdapterCheckpoint(pl.Callback):
    def __init__(
        self,
        filename: str = "adapter.safetensors",
        every_n_steps: int = 0,
        dirpath: str | None = None,
        dtype: str = "same",
        keep_last: int = 0,
    ):
        if keep_last < 0:
            raise ValueError(f"adapter keep_last must be >= 0 (0: keep all), got {keep_last}")
        if dtype not in ADAPTER_DTYPES:
            raise ValueError(
                f"adapter dtype: unknown value {dtype!r}; choose one of {', '.join(ADAPTER_DTYPES)}"
            )
        self.filename, self.every_n_steps, self.dirpath = filename, every_n_steps, dirpath
        self.dtype = ADAPTER_DTYPES[dtype]
        self.keep_last = keep_last
        self.last_path: Path | None = None
        self._last_step = -1

    def _path(self, trainer: pl.Trainer) -> Path:
        return Path(self.dirpath) if self.dirpath else run_dir(trainer)

    @rank_zero_only
    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str) -> None:
        self.last_path = pl_module.save_adapter(self._path(trainer) / name, dtype=self.dtype)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        # step > 0: nothing trained yet; a step seen before: accumulated batches share one global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._last_step = step
            self._save(trainer, pl_module, f"adapter-step{step:06d}.safetensors")
            self._prune(trainer)

    @rank_zero_only
    def _prune(self, trainer: pl.Trainer) -> None:
        """Keep only the newest `keep_last` intermediate adapters (0: all)."""
        if not self.keep_last:
            return
        steps = sorted(self._path(trainer).glob("adapter-step*.safetensors"))  # zero-padded: by step
        for old in steps[: -self.keep_last]:
            old.unlink(missing_ok=True)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module, self.filename)
        if self.last_path is not None:
            print(f"adapter: {self.last_path}")
