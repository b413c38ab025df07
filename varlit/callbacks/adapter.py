"""Writes the subject adapter (tuned tensors + subject vectors + config) at the end of training and every
`every_n_steps`, atomically; the adapter is what `varlit sample` and `varlit eval` load on a base model."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_only

from .run_dir import run_dir


class AdapterCheckpoint(pl.Callback):
    def __init__(
        self, filename: str = "adapter.safetensors", every_n_steps: int = 0, dirpath: str | None = None
    ):
        self.filename, self.every_n_steps, self.dirpath = filename, every_n_steps, dirpath
        self.last_path: Path | None = None

    def _path(self, trainer: pl.Trainer) -> Path:
        return Path(self.dirpath) if self.dirpath else run_dir(trainer)

    @rank_zero_only
    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str) -> None:
        self.last_path = pl_module.save_adapter(self._path(trainer) / name)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0:
            self._save(trainer, pl_module, f"adapter-step{step:06d}.safetensors")

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module, self.filename)
        if self.last_path is not None:
            print(f"adapter: {self.last_path}")
