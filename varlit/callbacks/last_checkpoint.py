"""`<run dir>/checkpoints/last.ckpt`, what `--ckpt_path last` resumes: written often enough that a kill loses
little, rarely enough that writing it stays cheap, and always when the run is told to stop.

When: every `every_n_steps` steps (default: max_steps / 20, so a kill loses at most 5% of the run) or every
`every_minutes` minutes, whichever comes first; but never sooner than `1 / max_overhead` times the last write's
duration after it (a multi-GB checkpoint of a 2B model is not written every few steps), and at the end of
training. On SIGTERM (cluster preemption) or a first Ctrl-C the current step finishes, last.ckpt is written and
the run stops; a second Ctrl-C stops at once.

How: through `AtomicCheckpointIO`, i.e. `varlit.io.atomic_write` (temporary file in the same folder, fsync,
rename), so the previous last.ckpt stays intact until the new one is complete, whatever $TMPDIR is.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..io import atomic_write
from ..models.loading import CheckpointError

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written like every other varlit file: temp in the same folder, fsync, rename."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path: _PATH, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Lightning's restore; a file that fails to read is named in one line (the pre-check reads it first)."""
        try:
            return super().load_checkpoint(path, *args, **kwargs)
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise CheckpointError(
                f"--ckpt_path {path}: cannot restore it ({type(err).__name__}: {first[:200]})"
            ) from None


def steps_between_saves(every_n_steps: int | None, max_steps: int) -> int:
    """The step interval: the configured one, or 1/20 of the run (at least 1)."""
    if every_n_steps is not None:
        return max(1, int(every_n_steps))
    return max(1, math.ceil(max_steps / 20)) if max_steps and max_steps > 0 else 100


def save_is_due(
    step: int,
    last_step: int,
    seconds_since: float,
    every_n_steps: int,
    every_seconds: float,
    last_write_seconds: float,
    max_overhead: float,
) -> bool:
    """Whether last.ckpt should be written after `step` (a pure rule, tested on its own)."""
    if step <= last_step:
        return False
    if seconds_since < last_write_seconds / max_overhead:
        return False
    return step - last_step >= every_n_steps or seconds_since >= every_seconds


class LastCheckpoint(ModelCheckpoint):
    """Writes only `last.ckpt`, on the schedule above (a ModelCheckpoint, so Lightning adds no other one)."""

    def __init__(
        self,
        dirpath: str,
        every_n_steps: int | None = None,
        every_minutes: float = 10.0,
        max_overhead: float = 0.05,
    ):
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=False)
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"run.checkpoint_every_n_steps must be >= 1 or null, got {every_n_steps}")
        if every_minutes <= 0 or not 0 < max_overhead <= 1:
            raise ValueError(
                "run.checkpoint_every_minutes must be > 0 and run.checkpoint_max_overhead in (0, 1], got "
                f"{every_minutes} and {max_overhead}"
            )
        self.every_n_steps_cfg, self.every_minutes, self.max_overhead = (
            every_n_steps,
            every_minutes,
            max_overhead,
        )
        self._interval = 1
        self._last_step = -1
        self._last_time = time.monotonic()
        self._write_seconds = 0.0
        self._stop_requested = False
        self._previous_sigint: Any = None

    @property
    def path(self) -> Path:
        return Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"

    # ---- signals ---------------------------------------------------------------------------------

    def _on_sigint(self, signum, frame) -> None:
        if self._stop_requested:  # second Ctrl-C: stop now
            signal.signal(signal.SIGINT, self._previous_sigint or signal.default_int_handler)
            raise KeyboardInterrupt
        self._stop_requested = True
        log.warning(
            "interrupt: finishing this step, writing %s, then stopping (Ctrl-C again to abort)", self.path
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._interval = steps_between_saves(self.every_n_steps_cfg, trainer.max_steps)
        self._last_step, self._last_time = trainer.global_step, time.monotonic()
        try:
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread: Ctrl-C keeps Lightning's handling
            self._previous_sigint = None

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def _stop_signalled(self, trainer: pl.Trainer) -> bool:
        local = self._stop_requested or bool(getattr(trainer, "received_sigterm", False))
        if trainer.world_size > 1:
            return bool(trainer.strategy.reduce_boolean_decision(local, all=False))
        return local

    # ---- saving ----------------------------------------------------------------------------------

    def _write(self, trainer: pl.Trainer) -> None:
        t0 = time.monotonic()
        # weights_only=False: a resume needs the optimizer and loop state too. Said explicitly, because
        # Lightning logs "`weights_only` was not set" at every save otherwise.
        trainer.save_checkpoint(str(self.path), weights_only=False)
        self._write_seconds = time.monotonic() - t0
        self._last_step, self._last_time = trainer.global_step, time.monotonic()
        self.last_model_path = str(self.path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._stop_signalled(trainer):
            if trainer.global_step > self._last_step:
                self._write(trainer)
            if trainer.is_global_zero:
                print(f"stopped at step {trainer.global_step}; resume with --ckpt_path last ({self.path})")
            if not getattr(trainer, "received_sigterm", False):
                raise KeyboardInterrupt  # Ctrl-C: Lightning shuts down (exit 1), no final adapter
            return  # SIGTERM: Lightning stops after this step (exit 143), no final adapter
        due = save_is_due(
            trainer.global_step,
            self._last_step,
            time.monotonic() - self._last_time,
            self._interval,
            self.every_minutes * 60.0,
            self._write_seconds,
            self.max_overhead,
        )
        if trainer.world_size > 1:  # every rank must take part in a save: one decision for all
            due = bool(trainer.strategy.reduce_boolean_decision(due, all=False))
        if due:
            self._write(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_sigint()
        if trainer.global_step > self._last_step:
            self._write(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore_sigint()

    # ModelCheckpoint's own triggers (epoch and validation ends) are replaced by the schedule above.
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        return

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        return
