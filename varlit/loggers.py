"""Run folders and loggers: CSV always, wandb when installed (offline without an API key or with WANDB_MODE)."""

from __future__ import annotations

import netrc
import os
from dataclasses import dataclass, field
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger


@dataclass
class RunConfig:
    """Naming of a run: its folder `root/name`, and how it shows up in wandb (project, group, tags, job type)."""

    name: str = "default"
    root: str = "runs"
    wandb: bool = True
    project: str = "varlit"
    group: str | None = None  # one per sweep: the dashboards group ablation variants by it
    tags: list[str] = field(default_factory=list)  # one per variant
    job_type: str = "fit"

    @property
    def dir(self) -> Path:
        return Path(self.root) / self.name


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
    """CSV metrics in the run folder; wandb beside them unless switched off or not installed."""
    run.dir.mkdir(parents=True, exist_ok=True)
    loggers: list[Logger] = [CSVLogger(save_dir=str(run.dir), name="", version="csv")]
    if run.wandb:
        try:
            import wandb  # noqa: F401
            from lightning.pytorch.loggers import WandbLogger
        except ImportError:
            return loggers
        loggers.append(
            WandbLogger(
                project=run.project,
                name=run.name,
                group=run.group,
                tags=list(run.tags) or None,
                job_type=run.job_type,
                save_dir=str(run.dir),
                offline=wandb_offline(),
            )
        )
    return loggers
