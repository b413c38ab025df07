"""Plain commands over typed functions: `run_function` parses a command line into a function's arguments
(jsonargparse: `--config file.yaml`, repeatable, and `--print_config`) and calls it. The sub-commands that
are not LightningCLI runs (lightning_cli.py) use it; it imports nothing of varlit."""

from __future__ import annotations

from collections.abc import Callable

from jsonargparse import ActionConfigFile, ArgumentParser


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
