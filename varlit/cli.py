"""The `varlit` console script.

`fit` and `validate` are LightningCLI runs over the subject-tuning module and data module;
`sample`, `eval`, `download`, `data` and `bench` are plain commands with the same config-file conventions
(`--config file.yaml`, repeatable, and `--print_config`).

This module only dispatches: a command's module is imported when that command runs (the tables `MAINS` and
`FUNCTIONS` below), and nothing in varlit imports this module back.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

from .function_cli import run_function

USAGE = """usage: varlit <command> [options]

commands:
  fit | validate          LightningCLI runs (see `varlit fit --help`); validate scores the run's last checkpoint
  sample                  generate PNGs from a preset, checkpoint and optional subject adapter
  eval                    DreamBench-style evaluation of subject adapters
  compare                 two eval folders side by side: table and picture (`varlit compare --before B --after A`)
  export                  a LoRA adapter as a peft folder with a model card (`varlit export --adapter A --out DIR`)
  push                    export, then upload to the Hugging Face hub (`varlit push --adapter A --repo user/name`)
  download                fetch a preset's released weights (`varlit download --preset infinity-2b`)
  data                    dataset helpers (`varlit data dreambench [--out data/dreambench]`)
  bench                   speed and memory benchmarks
  sweep                   ablation sweeps: run, collect, launch, wandb (see `make help`)
  pretrain                train a VAE or transformer on captioned images (`varlit pretrain vae|infinity`)
  world                   the procedural world: text-encoder, judge, subjects, export, report
"""


def _user_errors() -> tuple[type[BaseException], ...]:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from .models.loading import CheckpointError
    from .models.presets import UnknownPresetError
    from .models.text import HubUnavailableError

    # PermissionError: a folder os.access calls writable that refuses writes all the same (e.g. under /sys)
    return (
        ValueError,
        UnknownPresetError,
        CheckpointError,
        HubUnavailableError,
        FileNotFoundError,
        PermissionError,
        MisconfigurationException,
    )


def run_lightning(argv: list[str]) -> object:
    from .lightning_cli import VarlitCLI
    from .subject_args import replace_config_choices

    # `--data.subject_dir DIR` (or `--model.preset P`) on top of a config replaces the config's subject
    # (preset), its captions file (weights) included
    return VarlitCLI(args=[argv[0], *replace_config_choices(argv[1:])])


# `varlit NAME ...` -> "module:function" given the rest of the command line: a command that reads its own
# arguments. Each module is imported only when its command runs, and none of them imports varlit.cli.
MAINS: dict[str, str] = {
    "pretrain": "varlit.pretrain.cli:main",
    "world": "varlit.world.cli:main",
    "bench": "varlit.bench.cli:command",
}

# `varlit NAME ...` -> "module:function" whose typed arguments the command line gives (run_function)
FUNCTIONS: dict[str, str] = {
    "sample": "varlit.commands.sample:sample_images",
    "compare": "varlit.eval.compare:compare",
    "export": "varlit.commands.share:export_adapter",
    "push": "varlit.commands.share:push_adapter",
    "download": "varlit.commands.download:download",
}


def _entry(spec: str) -> Callable:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _commands() -> dict[str, Callable[[list[str]], object]]:
    def sweep(argv: list[str]) -> object:
        from .sweeps.cli import main as sweeps_main

        code = sweeps_main(argv)
        if code:
            raise SystemExit(code)
        return code

    def data(argv: list[str]) -> object:
        if not argv or argv[0] != "dreambench":
            raise ValueError("usage: varlit data dreambench --out DIR [--url URL] [--force]")
        from .data.dreambench import main as dreambench_main

        code = dreambench_main(argv[1:])
        if code:
            raise SystemExit(code)
        return code

    def evaluate(argv: list[str]) -> object:
        from .commands.eval import main as eval_main  # its own parser: reads whole fit configs
        from .subject_args import replace_config_choices

        return eval_main(replace_config_choices(argv))

    mains = {name: (lambda argv, spec=spec: _entry(spec)(argv)) for name, spec in MAINS.items()}
    functions = {
        name: (lambda argv, name=name, spec=spec: run_function(_entry(spec), argv, f"varlit {name}"))
        for name, spec in FUNCTIONS.items()
    }
    lightning = {name: (lambda argv, name=name: run_lightning([name, *argv])) for name in ("fit", "validate")}
    return {**mains, **functions, "eval": evaluate, "data": data, "sweep": sweep, **lightning}


REMOVED = {
    "test": "`varlit test` was removed (there is no test split); use `varlit eval` for the DreamBench protocol"
}


def main(argv: list[str] | None = None) -> None:
    try:
        _main(argv)
    except BrokenPipeError:  # `varlit ... | head`: the reader left; quietly stop writing
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(0) from None


def _main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    commands = _commands()
    if command in REMOVED:
        print(f"varlit: error: {REMOVED[command]}", file=sys.stderr)
        raise SystemExit(2)
    if command not in commands:
        print(f"varlit: error: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    try:
        from .threads import apply_thread_policy

        apply_thread_policy()
        commands[command](rest)
    except KeyboardInterrupt:  # Ctrl-C outside training (which saves and exits 130 itself)
        print(f"varlit {command}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except _user_errors() as err:
        msg = str(err).strip() or type(err).__name__
        if isinstance(err, PermissionError) and err.filename:
            msg = f"cannot write {err.filename}: permission denied; choose an output folder you can write to"
        print(f"varlit {command}: error: {msg}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
