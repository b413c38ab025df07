"""Run-folder safety for `varlit fit`: nothing a finished or killed run wrote is lost by the next command.

- A fresh run refuses a folder that already holds a run's files unless `--run.overwrite true`; a resume
  (`--ckpt_path`) continues the folder, and its CSV metrics are appended to, never replaced.
- One fit per folder at a time: an exclusive lock on `<run dir>/.lock` (released by the kernel even on kill -9).
- A fit that fails before its first training step leaves nothing behind: a folder it created is removed, and
  files of an earlier run in it are only touched once training starts.
- Leftover temporary files of checkpoints killed mid-write are removed when the lock is taken.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path

import lightning.pytorch as pl

from .io import FolderError, check_writable_dir

__all__ = ["RunFolder", "RunFolderCallback", "RunFolderError", "check_writable_dir", "temp_files"]

log = logging.getLogger(__name__)

LOCK = ".lock"
CHECKPOINTS = "checkpoints"
# What `varlit fit` writes into its folder; a folder holding any of these holds a run.
FIT_OUTPUTS = (
    "config.yaml",
    "csv",
    CHECKPOINTS,
    "summary.json",
    "adapter.safetensors",
    "samples",
)


class RunFolderError(FolderError):
    """The run folder cannot be used as asked (in use, holds another run, not writable)."""


def temp_files(folder: Path) -> list[Path]:
    """Temporary files of `varlit.io.atomic_write` left by a killed write (`.<name>.<random>.tmp`)."""
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file()]


def _rank() -> int:
    from lightning.fabric.utilities.rank_zero import _get_rank

    return _get_rank() or 0


class RunFolder:
    """The run folder of one `varlit fit`, from the first check to the end of the command (rank 0 only)."""

    def __init__(self, path: str | os.PathLike, resume: bool, overwrite: bool):
        self.path = Path(path)
        self.resume, self.overwrite = resume, overwrite
        self.created = False
        self._created_top: Path | None = None
        self.training_started = False
        self._lock_fd: int | None = None
        self.active = _rank() == 0  # other ranks of a distributed run share rank 0's folder

    def existing_run_files(self) -> list[str]:
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.name in FIT_OUTPUTS)

    def check(self) -> None:
        """Before any weights load: writable, and not another run's folder unless resuming or overwriting."""
        if not self.active:
            return
        check_writable_dir(self.path, "run folder")
        found = self.existing_run_files()
        if found and not self.resume and not self.overwrite:
            raise RunFolderError(
                f"run folder {self.path} already holds a run ({', '.join(found)}); resume it with "
                "--ckpt_path last, pick another --run.name, or replace it with --run.overwrite true"
            )

    def acquire(self) -> None:
        """Create the folder if needed and lock it; a second fit on the same folder stops here."""
        if not self.active or self._lock_fd is not None:
            return
        top = self.path
        while not top.parent.exists() and top.parent != top:
            top = top.parent
        self.created = not self.path.exists()
        self._created_top = top if self.created else None  # the highest folder this command creates
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderError(
                f"run folder {self.path} is in use by another varlit fit (pid {holder}); wait for it to finish "
                "or pick another --run.name"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        for tmp in [*temp_files(self.path), *temp_files(self.path / CHECKPOINTS)]:
            log.info("removing %s, left by a write that was killed", tmp)
            tmp.unlink(missing_ok=True)

    def start_training(self) -> None:
        """The first training step is about to run: from here on the folder is this run's."""
        if not self.active or self.training_started:
            return
        self.training_started = True
        if self.overwrite and not self.resume:
            self._remove_previous_outputs()

    def _remove_previous_outputs(self) -> None:
        """`--run.overwrite true`: the previous run's metrics and checkpoints go, so they cannot be mixed in."""
        metrics = self.path / "csv" / "metrics.csv"
        metrics.unlink(missing_ok=True)
        for ckpt in (self.path / CHECKPOINTS).glob("*.ckpt"):
            ckpt.unlink()
        for name in ("summary.json", "adapter.safetensors"):
            (self.path / name).unlink(missing_ok=True)
        for old in self.path.glob("adapter-step*.safetensors"):
            old.unlink()
        shutil.rmtree(self.path / "samples", ignore_errors=True)

    def finish(self, failed: bool) -> None:
        """Release the lock; a failure before training removes a folder this command created."""
        if not self.active:
            return
        if failed and not self.training_started and self._created_top is not None:
            shutil.rmtree(self._created_top, ignore_errors=True)
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None


class RunFolderCallback(pl.Callback):
    """Tells the run folder when training starts (from then on a failure keeps what was written)."""

    def __init__(self, folder: RunFolder):
        self.folder = folder

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.folder.start_training()
