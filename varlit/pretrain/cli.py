"""`varlit pretrain vae|infinity`: LightningCLI runs of the pretraining modules over `PretrainDataModule`.

A run lives in `<run.root>/<run.name>/`: `config.yaml`, `csv/metrics.csv`, `checkpoints/last.ckpt`
(resume with `--ckpt_path last`) and, at the end, the trained weights as `vae.safetensors` or
`infinity.safetensors` (what `--vae_weights` / `--weights` and the world export read).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from .data import PretrainDataModule
from .infinity_module import InfinityPretrainModule
from .vae_module import VAEPretrainModule

MODULES = {"vae": VAEPretrainModule, "infinity": InfinityPretrainModule}
WEIGHT_FILES = {"vae": "vae.safetensors", "infinity": "infinity.safetensors"}


@dataclass
class PretrainRun:
    """Where a pretraining run writes: `root/name`."""

    name: str = "pretrain"
    root: str = "runs"
    checkpoint_every_n_steps: int = 200

    @property
    def dir(self) -> Path:
        return Path(self.root) / self.name


class ExportWeights(Callback):
    """At the end of training, write the trained weights as safetensors in the run folder (atomically)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_end(self, trainer: Trainer, pl_module) -> None:
        if trainer.is_global_zero:
            from safetensors.torch import save_file

            from varlit.io import atomic_write

            state = pl_module.export_state()
            atomic_write(self.path, lambda tmp: save_file(state, tmp))
            print(f"weights -> {self.path}")


class _SaveConfig(SaveConfigCallback):
    def save_config(self, trainer: Trainer, pl_module, stage: str) -> None:
        path = Path(trainer.default_root_dir) / self.config_filename
        path.parent.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, str(path), skip_none=False, overwrite=True, multifile=False)


class PretrainCLI(LightningCLI):
    def __init__(self, kind: str, args: list[str] | None = None, run: bool = True):
        if kind not in MODULES:
            raise ValueError(f"unknown pretraining target {kind!r}; choose one of {', '.join(MODULES)}")
        from varlit.lightning_cli import quiet_lightning

        quiet_lightning()
        self.kind = kind
        super().__init__(
            MODULES[kind],
            PretrainDataModule,
            args=args,
            run=run,
            save_config_callback=_SaveConfig,
            save_config_kwargs={"overwrite": True},
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # `varlit pretrain` always passes its own argv: Lightning's warning about args *and* sys.argv does
        # not apply.
        self.config = parser.parse_args(args) if args is not None else parser.parse_args()

    def _parse_ckpt_path(self) -> None:
        """The `--ckpt_path` to resume, read safely and in full before Lightning opens it (as `varlit fit`)."""
        from varlit.resume import read_fit_checkpoint

        sub = self.config.get("subcommand")
        cfg = self.config[sub] if sub else self.config
        ckpt = cfg.get("ckpt_path")
        if ckpt == "last":
            last = Path(cfg.get("run.root")) / cfg.get("run.name") / "checkpoints" / "last.ckpt"
            ckpt = str(last) if last.is_file() else None
        if ckpt and ckpt not in ("best", "hpc", "registry"):
            read_fit_checkpoint(ckpt, command="varlit pretrain")
        super()._parse_ckpt_path()

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(PretrainRun, "run")
        parser.set_defaults({"trainer.max_steps": 1000, "trainer.logger": False})

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        from lightning.pytorch.loggers import CSVLogger

        run: PretrainRun = self._get(self.config_init, "run")
        config["default_root_dir"] = str(run.dir)
        if config.get("logger") in (None, False, True):
            config["logger"] = CSVLogger(save_dir=str(run.dir), name="", version="csv")
        config["callbacks"] = list(config.get("callbacks") or []) + [
            ModelCheckpoint(
                dirpath=str(run.dir / "checkpoints"),
                save_last=True,
                every_n_train_steps=run.checkpoint_every_n_steps,
                save_top_k=0,
            ),
            ExportWeights(run.dir / WEIGHT_FILES[self.kind]),
        ]
        return super()._instantiate_trainer(config, callbacks)


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: varlit pretrain {vae,infinity} [fit options]   (e.g. --config experiments/world/vae.yaml)"
        )
        return
    kind, rest = argv[0], argv[1:]
    if kind not in MODULES:
        raise ValueError(f"unknown pretraining target {kind!r}; choose one of {', '.join(MODULES)}")
    if not rest or rest[0] not in ("fit", "validate"):
        rest = ["fit", *rest]
    PretrainCLI(kind, args=rest)
