"""LightningCLI for `varlit fit | validate | test` over SubjectTuningModule and SubjectDataModule.

Additions to the stock CLI: a `run` group (folder name, wandb project/group/tags/job type), loggers and
default callbacks built from it, checkpoints in `<run dir>/checkpoints` (so `--ckpt_path last` resumes a
killed run), the resolved config saved as `<run dir>/config.yaml` and uploaded to wandb.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from .callbacks.adapter import AdapterCheckpoint
from .callbacks.run_summary import RunSummary
from .callbacks.samples import SampleGrid
from .callbacks.scale_losses import PerScaleLosses
from .data.datamodule import SubjectDataModule
from .eval.config import EvalConfig
from .loggers import RunConfig, make_loggers
from .module import SubjectTuningModule


class SaveRunConfig(SaveConfigCallback):
    """Writes the resolved config into the run folder (and into wandb's run config)."""

    def save_config(self, trainer: Trainer, pl_module, stage: str) -> None:
        path = Path(trainer.default_root_dir) / self.config_filename
        path.parent.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, str(path), skip_none=False, overwrite=True, multifile=False)
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                logger.experiment.config.update(_plain(self.config.as_dict()), allow_val_change=True)


def _plain(d: Any) -> Any:
    if isinstance(d, dict):
        return {str(k): _plain(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_plain(v) for v in d]
    return d if isinstance(d, (int, float, str, bool, type(None))) else str(d)


class VarlitCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, run: bool = True):
        super().__init__(
            SubjectTuningModule,
            SubjectDataModule,
            args=args,
            run=run,
            save_config_callback=SaveRunConfig,
            save_config_kwargs={"overwrite": True, "save_to_log_dir": False},
            auto_configure_optimizers=False,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(RunConfig, "run")
        parser.add_class_arguments(EvalConfig, "eval")  # the `eval:` section that `varlit eval` reads
        # The data module draws per-rank batches itself (resumable order); Lightning must not wrap it.
        parser.set_defaults({"trainer.max_steps": 500, "trainer.use_distributed_sampler": False})

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        run: RunConfig = self._get(self.config_init, "run")
        config["default_root_dir"] = str(run.dir)
        if config.get("logger") in (None, True):  # not configured: varlit's CSV + wandb loggers
            config["logger"] = make_loggers(run)
        given = list(config.get("callbacks") or []) + list(callbacks)
        have = {type(c) for c in given}
        defaults: list[Callback] = [
            ModelCheckpoint(
                dirpath=str(run.dir / "checkpoints"), save_last=True, every_n_train_steps=100, save_top_k=0
            ),
            AdapterCheckpoint(),
            SampleGrid(),
            PerScaleLosses(),
            RunSummary(),
        ]
        config["callbacks"] = given + [c for c in defaults if not any(issubclass(h, type(c)) for h in have)]
        return super()._instantiate_trainer(config, [])
