"""LightningCLI for `varlit fit | validate | test` over SubjectTuningModule and SubjectDataModule.

Additions to the stock CLI: a `run` group (folder name, wandb project/group/tags/job type), loggers and
default callbacks built from it, checkpoints in `<run dir>/checkpoints` (so `--ckpt_path last` resumes a
killed run), the resolved config saved as `<run dir>/config.yaml` and uploaded to wandb.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .callbacks.adapter import AdapterCheckpoint
from .callbacks.last_checkpoint import AtomicCheckpointIO, LastCheckpoint
from .callbacks.run_summary import RunSummary
from .callbacks.samples import SampleGrid
from .callbacks.scale_losses import PerScaleLosses
from .data.datamodule import SubjectDataModule, default_cache_dir
from .eval.config import EvalConfig
from .io import atomic_write
from .loggers import RunConfig, make_loggers
from .module import SubjectTuningModule
from .resume import check_fits_module, check_settings, read_fit_checkpoint, resolve_ckpt_path
from .run_folder import RunFolder, RunFolderCallback, check_writable_dir


class SaveRunConfig(SaveConfigCallback):
    """Writes the resolved config into the run folder (and into wandb's run config) when training starts.

    Nothing is written before (a fit that fails first leaves the folder as it was); a resume keeps the
    config.yaml the run started with and writes its own `config-resume-stepNNNNNN.yaml` beside it.
    """

    resumed = False  # set by VarlitCLI for `--ckpt_path` runs

    def setup(self, trainer: Trainer, pl_module, stage: str) -> None:
        return

    def on_train_start(self, trainer: Trainer, pl_module) -> None:
        if not self.already_saved:
            self.save_config(trainer, pl_module, "fit")
            self.already_saved = True

    def save_config(self, trainer: Trainer, pl_module, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        path = Path(trainer.default_root_dir) / self.config_filename
        if self.resumed and path.exists():
            path = path.with_name(f"config-resume-step{trainer.global_step:06d}.yaml")
        atomic_write(
            path,
            lambda tmp: self.parser.save(self.config, tmp, skip_none=False, overwrite=True, multifile=False),
        )
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
        self.run_folder: RunFolder | None = None
        self.resume_ckpt: dict[str, Any] | None = None
        failed = True
        try:
            super().__init__(
                SubjectTuningModule,
                SubjectDataModule,
                args=args,
                run=run,
                save_config_callback=SaveRunConfig,
                save_config_kwargs={"overwrite": True, "save_to_log_dir": False},
                auto_configure_optimizers=False,
            )
            failed = False
        except SIGTERMException:
            raise SystemExit(143) from None  # preempted: last.ckpt was written at the step boundary
        finally:
            if self.run_folder is not None:
                self.run_folder.finish(failed)

    def _parse_ckpt_path(self) -> None:
        """Lightning would overlay the checkpoint's saved settings on the command line (and follow the paths
        stored in it); varlit runs what the command line says and compares (`varlit.resume`)."""

    def _check_run(self, cfg: Any) -> None:
        """Fit and validate: the checkpoint to resume (read safely), the run folder and the cache folder,
        all before any weights load."""
        if self.subcommand is None:  # run=False: only building the objects
            return
        run_dir = Path(cfg.get("run.root")) / cfg.get("run.name")
        ckpt = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir)
        cfg["ckpt_path"] = ckpt
        self.resume_ckpt = read_fit_checkpoint(ckpt) if ckpt else None
        if self.subcommand != "fit":
            return
        check_writable_dir(cfg.get("data.cache_dir") or default_cache_dir(), "data.cache_dir")
        self.run_folder = RunFolder(
            run_dir, resume=ckpt is not None, overwrite=bool(cfg.get("run.overwrite"))
        )
        self.run_folder.check()

    def _check_resume_fits(self) -> None:
        sub = self.config_init[self.subcommand]
        if "weights_only" in sub:
            sub["weights_only"] = True  # Lightning's restore must not unpickle code either
        ckpt_path = sub.get("ckpt_path")
        if self.resume_ckpt is not None:
            data = self.datamodule.hparams if self.datamodule is not None else None
            check_settings(self.resume_ckpt, self.model.hparams, data, ckpt_path)  # names what differs
            check_fits_module(self.resume_ckpt, self.model, ckpt_path)
            self.resume_ckpt = None  # Lightning reads the file again when it restores

    def before_fit(self) -> None:
        self._check_resume_fits()
        for cb in self.trainer.callbacks:
            if isinstance(cb, SaveRunConfig):
                cb.resumed = self.config_init["fit"].get("ckpt_path") is not None
        if self.run_folder is not None:
            self.run_folder.acquire()

    def before_validate(self) -> None:
        self._check_resume_fits()

    def before_instantiate_classes(self) -> None:
        self._check_run(self.config[self.subcommand] if self.subcommand else self.config)

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
            LastCheckpoint(
                str(run.dir / "checkpoints"),
                run.checkpoint_every_n_steps,
                run.checkpoint_every_minutes,
                run.checkpoint_max_overhead,
            ),
            AdapterCheckpoint(),
            SampleGrid(),
            PerScaleLosses(),
            RunSummary(),
        ]
        config["callbacks"] = given + [c for c in defaults if not any(issubclass(h, type(c)) for h in have)]
        if self.run_folder is not None:
            config["callbacks"].append(RunFolderCallback(self.run_folder))
        plugins = config.get("plugins")
        plugins = (
            [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        )
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())  # checkpoints written atomically next to their final name
        config["plugins"] = plugins
        return super()._instantiate_trainer(config, [])
