"""Run folders and loggers: CSV always, wandb when installed (offline without an API key or with WANDB_MODE)."""

from __future__ import annotations

import csv
import netrc
import os
from dataclasses import dataclass, field
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


@dataclass
class RunConfig:
    """Naming of a run: its folder `root/name`, and how it shows up in wandb (project, group, tags, job type)."""

    name: str = "default"
    root: str = "runs"
    wandb: bool = True
    tensorboard: bool = False  # TensorBoard event files in <run dir>/tensorboard (with or instead of wandb)
    project: str = "varlit"
    group: str | None = None  # one per sweep: the dashboards group ablation variants by it
    tags: list[str] = field(default_factory=list)  # one per variant
    job_type: str = "fit"
    overwrite: bool = False  # a fresh fit may replace the run already in this folder
    # last.ckpt (for `--ckpt_path last`): every N steps (None: max_steps / 20) or M minutes, whichever is
    # first, unless writing would take more than `checkpoint_max_overhead` of the time; always on SIGTERM/SIGINT
    checkpoint_every_n_steps: int | None = None
    checkpoint_every_minutes: float = 10.0
    checkpoint_max_overhead: float = 0.05
    # also write adapter-stepNNNNNN.safetensors every N steps (0: only the final adapter)
    adapter_every_n_steps: int = 0
    adapter_keep_last: int = 0  # keep only the newest N intermediate adapters (0: all)
    adapter_dtype: str = "same"  # same (the training dtype of the tuned tensors) | float32 | bfloat16

    @property
    def dir(self) -> Path:
        return Path(self.root) / self.name


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; a resumed run appends to it instead."""

    def __init__(self, log_dir: str) -> None:
        self._header_read = False
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        """Keep what is there (the stock writer deletes metrics.csv here)."""

    def save(self) -> None:
        if not self._header_read and self.metrics and self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(set(self.metrics_keys) | set(header))
        self._header_read = self._header_read or bool(self.metrics)
        super().save()


class AppendingCSVLogger(CSVLogger):
    """CSV metrics in `<run dir>/csv/metrics.csv`, appended to across resumes."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def wandb_has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def wandb_offline() -> bool:
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode:
        return mode in ("offline", "disabled", "dryrun")
    return not wandb_has_api_key()


def make_loggers(run: RunConfig) -> list[Logger]:
    """CSV metrics in the run folder; TensorBoard with `run.tensorboard`; wandb beside them unless switched
    off or not installed."""
    loggers: list[Logger] = [AppendingCSVLogger(save_dir=str(run.dir), name="", version="csv")]
    if run.tensorboard:
        from lightning.pytorch.loggers import TensorBoardLogger

        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ValueError(
                "run.tensorboard: the tensorboard package is not installed (pip install 'tensorboard>=2.14')"
            ) from None
        # default_hp_metric off: no meaningless "hp_metric = -1" scalar in every run
        loggers.append(
            TensorBoardLogger(save_dir=str(run.dir), name="", version="tensorboard", default_hp_metric=False)
        )
    if run.wandb:
        try:
            import wandb  # noqa: F401
            from lightning.pytorch.loggers import WandbLogger
        except ImportError:
            return loggers
        logger = WandbLogger(
            project=run.project,
            name=run.name,
            group=run.group,
            tags=list(run.tags) or None,
            job_type=run.job_type,
            save_dir=str(run.dir),
            offline=wandb_offline(),
        )
        # Lightning always passes `anonymous=None`, which wandb answers with a deprecation warning.
        init_args = getattr(logger, "_wandb_init", {})
        if init_args.get("anonymous") is None:
            init_args.pop("anonymous", None)
        loggers.append(logger)
    return loggers
