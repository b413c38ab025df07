"""The `varlit` console script.

`fit` and `validate` are LightningCLI runs over the subject-tuning module and data module;
`sample`, `eval`, `download`, `data` and `bench` are plain commands with the same config-file conventions
(`--config file.yaml`, repeatable, and `--print_config`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from jsonargparse import ActionConfigFile, ArgumentParser

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


def run_function(fn: Callable, argv: list[str], prog: str) -> object:
    """Parse `argv` into `fn`'s typed arguments (config files allowed) and call it."""
    parser = ArgumentParser(prog=prog, description=(fn.__doc__ or "").split("\n")[0], exit_on_error=True)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file(s), repeatable")
    parser.add_function_arguments(fn, as_group=False)
    cfg = parser.parse_args(argv)
    init = parser.instantiate_classes(cfg)
    kwargs = {k: v for k, v in vars(init).items() if k not in ("config", "__path__")}
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith("__")}
    return fn(**kwargs)


def run_lightning(argv: list[str]) -> object:
    from .lightning_cli import VarlitCLI
    from .subject_args import replace_config_choices

    # `--data.subject_dir DIR` (or `--model.preset P`) on top of a config replaces the config's subject
    # (preset), its captions file (weights) included
    return VarlitCLI(args=[argv[0], *replace_config_choices(argv[1:])])


def _commands() -> dict[str, Callable[[list[str]], object]]:
    def sample(argv: list[str]) -> object:
        from .commands.sample import sample_images

        return run_function(sample_images, argv, "varlit sample")

    def download(argv: list[str]) -> object:
        from .commands.download import download as download_fn

        return run_function(download_fn, argv, "varlit download")

    def bench(argv: list[str]) -> object:
        from .bench import run_bench

        return run_function(run_bench, argv, "varlit bench")

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

    def compare(argv: list[str]) -> object:
        from .eval.compare import compare as compare_evals

        return run_function(compare_evals, argv, "varlit compare")

    def export(argv: list[str]) -> object:
        from .commands.share import export_adapter

        return run_function(export_adapter, argv, "varlit export")

    def push(argv: list[str]) -> object:
        from .commands.share import push_adapter

        return run_function(push_adapter, argv, "varlit push")

    def pretrain(argv: list[str]) -> object:
        from .pretrain.cli import main as pretrain_main

        return pretrain_main(argv)

    def world(argv: list[str]) -> object:
        from .world.cli import main as world_main

        return world_main(argv)

    lightning = {name: (lambda argv, name=name: run_lightning([name, *argv])) for name in ("fit", "validate")}
    return {
        "pretrain": pretrain,
        "world": world,
        "sample": sample,
        "eval": evaluate,
        "compare": compare,
        "export": export,
        "push": push,
        "download": download,
        "data": data,
        "bench": bench,
        "sweep": sweep,
        **lightning,
    }


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
