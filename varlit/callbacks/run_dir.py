"""Where a run writes its files, and the wandb run (if any) behind a trainer."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl


def run_dir(trainer: pl.Trainer) -> Path:
    """`varlit fit` sets default_root_dir to runs/<run.name>; adapters, grids and tables go there."""
    return Path(trainer.default_root_dir)


def wandb_run(trainer: pl.Trainer):
    """The wandb run behind the trainer's loggers, or None."""
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger":
            return logger.experiment
    return None
