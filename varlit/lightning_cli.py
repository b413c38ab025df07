"""LightningCLI for `varlit fit | validate` over SubjectTuningModule and SubjectDataModule.

Additions to the stock CLI: a `run` group (folder name, wandb project/group/tags/job type), loggers and
default callbacks built from it, checkpoints in `<run dir>/checkpoints` (so `--ckpt_path last` resumes a
killed run), the resolved config saved as `<run dir>/config.yaml` and uploaded to wandb.

Before any weights load it checks what is quick to check (GPU, photos, DreamBench, the checkpoint that
`validate` scores) and maps Lightning's optimisation flags onto the module's manual optimisation:
`--trainer.accumulate_grad_batches` becomes `model.optim.accumulate_grad_batches`, norm clipping
(`--trainer.gradient_clip_val`) becomes `model.optim.grad_clip`. A bad flag is one error line with a hint.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import re
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from .callbacks.adapter import AdapterCheckpoint
from .callbacks.last_checkpoint import AtomicCheckpointIO, LastCheckpoint
from .callbacks.run_summary import RunSummary
from .callbacks.samples import SampleGrid
from .callbacks.scale_losses import PerScaleLosses
from .callbacks.validate_last import ValidateAtLastStep
from .data import world_subjects
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


class _DropAdverts(logging.Filter):
    """Lightning's info lines that advertise other packages ("💡 Tip: ... try installing ...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless" not in record.getMessage()


def quiet_lightning() -> None:
    """Silence start-up noise that says nothing about the run (idempotent)."""
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropAdverts) for f in rank_zero_log.filters):
        rank_zero_log.addFilter(_DropAdverts())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


class VarlitParser(LightningArgumentParser):
    """Errors as one line (plus a close match for a mistyped key), not the full usage first."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        text = message.strip() or "invalid arguments"
        hint = ""
        unknown = re.search(
            r"(?:no action for key|unrecognized arguments:)\s*\"?(?:--)?([\w.]+)", message, re.I
        )
        if unknown:
            keys = [a.dest for a in parser._actions if a.dest and a.dest != "help"]
            close = difflib.get_close_matches(unknown.group(1), keys, n=1, cutoff=0.6)
            if close:
                hint = f"; did you mean --{close[0]}?"
        prog = parser.prog.replace(" [options]", "")
        lines = text.splitlines()
        lines[0] += hint  # the error itself first (jsonargparse's detail lines, if any, follow)
        sys.stderr.write(f"{prog}: error: " + "\n".join(lines) + f"\n(all options: {prog} --help)\n")
        raise SystemExit(2)


class EpochProgressBar(RichProgressBar):
    """Rich progress bar that shows "Epoch N" (Lightning shows "Epoch 0/-2" for step-limited runs)."""

    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        desc = f"Epoch {current_epoch}" + (f"/{max_epochs - 1}" if max_epochs and max_epochs > 0 else "")
        return f"{desc:{len(self.validation_description)}}"

    @property
    def total_train_batches(self) -> int | float:
        # Lightning caps the bar at the steps left, but the bar counts the epoch's batches from 0, and a
        # resumed epoch starts at the batches it had already run ("150/115" after a resume at step 35);
        # with gradient accumulation a step takes k batches.
        optim = getattr(self.trainer.lightning_module, "optim_cfg", None)
        k = getattr(optim, "accumulate_grad_batches", 1)
        max_steps = self.trainer.max_steps
        if self.trainer.max_epochs == -1 and max_steps and max_steps > 0:
            done = self.trainer.fit_loop.epoch_loop.batch_progress.current.ready
            left = k * (max_steps - self.trainer.global_step)
            return min(self.trainer.num_training_batches, done + left)
        return super().total_train_batches


def default_progress_bar() -> ProgressBar:
    return EpochProgressBar() if importlib.util.find_spec("rich") else TQDMProgressBar()


def _is_set(value: Any) -> bool:
    return value is not None


def map_optimisation_flags(cfg: Any) -> None:
    """Lightning's automatic-optimisation flags, translated for the module's manual optimisation."""
    accumulate = cfg.get("trainer.accumulate_grad_batches") or 1
    if accumulate != 1:
        own = cfg.get("model.optim.accumulate_grad_batches") or 1
        if own not in (1, accumulate):
            raise ValueError(
                f"trainer.accumulate_grad_batches={accumulate} contradicts "
                f"model.optim.accumulate_grad_batches={own}; set one of them"
            )
        cfg["model.optim.accumulate_grad_batches"] = accumulate
        cfg["trainer.accumulate_grad_batches"] = 1
    clip = cfg.get("trainer.gradient_clip_val")
    if _is_set(clip):
        algorithm = cfg.get("trainer.gradient_clip_algorithm") or "norm"
        if algorithm != "norm":
            raise ValueError(
                f"trainer.gradient_clip_algorithm={algorithm!r} is not supported: varlit clips the global "
                "gradient norm; use --model.optim.grad_clip MAX_NORM"
            )
        own = cfg.get("model.optim.grad_clip")
        if own is not None and float(own) != float(clip):
            raise ValueError(
                f"trainer.gradient_clip_val={clip} contradicts model.optim.grad_clip={own}; "
                "use --model.optim.grad_clip only"
            )
        cfg["model.optim.grad_clip"] = float(clip)
        cfg["trainer.gradient_clip_val"] = None
        cfg["trainer.gradient_clip_algorithm"] = None


def preflight(cfg: Any, subcommand: str) -> None:
    """Checks that take milliseconds, run before the base model's weights are looked up or loaded."""
    accelerator = str(cfg.get("trainer.accelerator") or "auto")
    wants_gpu = accelerator in ("gpu", "cuda") or str(cfg.get("model.init_device") or "").startswith("cuda")
    if wants_gpu and not torch.cuda.is_available():
        raise ValueError(
            f"trainer.accelerator={accelerator} / model.init_device={cfg.get('model.init_device')} ask for a "
            "GPU but torch sees none (torch.cuda.is_available() is False); use --trainer.accelerator cpu"
        )
    subject_dir = cfg.get("data.subject_dir")
    if subject_dir and not Path(subject_dir).expanduser().is_dir():
        raise ValueError(f"data.subject_dir: {subject_dir} is not a folder (--data.subject_dir)")
    if cfg.get("data.instance_prompt") and cfg.get("model.freeze.subject_embedding"):
        # A DreamBooth-style identifier is a word of the prompt: nothing to learn in the text.
        cfg["model.freeze.subject_embedding"] = False
        print("data.instance_prompt: a rare-token identifier, no learned subject vectors")
    subject = cfg.get("data.subject")
    if subject and not subject_dir and not world_subjects.is_world_spec(subject):
        from .data import dreambench

        root = cfg.get("data.dreambench_root")
        dreambench.dataset_dir(Path(root) if root else dreambench.default_root())
    if subcommand == "validate":
        ckpt = cfg.get("ckpt_path")
        if ckpt is None or ckpt == "last":
            run = RunConfig(name=cfg.get("run.name"), root=cfg.get("run.root"))
            last = run.dir / "checkpoints" / "last.ckpt"
            if not last.is_file():
                raise ValueError(
                    f"nothing to validate: {last} does not exist. Train the run first (`varlit fit` with the "
                    "same config and run.name) or pass --ckpt_path PATH; validating without a checkpoint "
                    "would score the untrained base model"
                )
            cfg["ckpt_path"] = str(last)
            print(f"validating {last}")


class VarlitCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, run: bool = True):
        quiet_lightning()
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
        except SystemExit as exc:
            trainer = getattr(self, "trainer", None)
            if exc.code == 1 and trainer is not None and trainer.interrupted:
                # Ctrl-C: Lightning shut down after last.ckpt was written and exits 1; the shell's code is 130
                signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning left SIGINT ignored
                raise SystemExit(130) from None
            raise
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
        step = int(self.resume_ckpt["global_step"]) if self.resume_ckpt is not None else None
        self._check_resume_fits()
        if step is not None:
            # Lightning restores the step counters for fit only: the metrics row and the grid would say step 0
            loop = self.trainer.fit_loop.epoch_loop
            loop.manual_optimization.optim_step_progress.total.completed = step
            loop._batches_that_stepped = step

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # `test` is gone: there is no test split; `varlit eval` runs the DreamBench protocol.
        return {k: v for k, v in LightningCLI.subcommands().items() if k in ("fit", "validate")}

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        self.parser_class = VarlitParser
        return super().init_parser(**kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # `varlit` always passes its own argv: Lightning's warning about args *and* sys.argv does not apply.
        self.config = parser.parse_args(args) if args is not None else parser.parse_args()

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        map_optimisation_flags(cfg)
        preflight(cfg, self.subcommand or "")
        self._check_run(cfg)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(RunConfig, "run")
        parser.add_class_arguments(EvalConfig, "eval")  # the `eval:` section that `varlit eval` reads
        # The data module draws per-rank batches itself (resumable order); Lightning must not wrap it.
        # Lightning's model summary is off: the module prints its own trainable-tensor table (and the
        # summary's FLOPs column is always 0 here).
        parser.set_defaults(
            {
                "trainer.max_steps": 500,
                "trainer.use_distributed_sampler": False,
                "trainer.enable_model_summary": False,
            }
        )

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
            AdapterCheckpoint(
                every_n_steps=run.adapter_every_n_steps,
                dtype=run.adapter_dtype,
                keep_last=run.adapter_keep_last,
            ),
            SampleGrid(),
            ValidateAtLastStep(),
            PerScaleLosses(),
            RunSummary(),
        ]
        if config.get("enable_progress_bar") is not False and not any(
            issubclass(h, ProgressBar) for h in have
        ):
            defaults.append(default_progress_bar())
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
        try:
            return super()._instantiate_trainer(config, [])
        except MisconfigurationException as err:  # e.g. --trainer.max_steps -5: Lightning's own check
            first = str(err).strip().splitlines()[0]
            field = re.search(r"`(\w+)`", first)
            flag = f"--trainer.{field.group(1)}" if field else "the --trainer.* flags (varlit fit --help)"
            raise ValueError(f"trainer: {first} (check {flag})") from None
