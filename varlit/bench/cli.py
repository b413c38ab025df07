"""The command line of the benchmarks: `varlit bench` (`command`, dispatched by varlit.cli) and
`python -m varlit.bench` (`main`), both jsonargparse over `run_bench`'s typed arguments."""

from __future__ import annotations

import sys

from .suite import run_bench


def command(argv: list[str]) -> dict:
    """`varlit bench ...`: its errors go to the caller (the `varlit` command reports them in one line)."""
    from ..function_cli import run_function

    return run_function(run_bench, argv, "varlit bench")


def main(argv: list[str] | None = None) -> dict:
    """`python -m varlit.bench`: jsonargparse over `run_bench`'s typed arguments (as `varlit bench`)."""
    try:
        return command(list(sys.argv[1:] if argv is None else argv))
    except ValueError as err:  # bad settings: one line, like the `varlit` command's other errors
        print(f"varlit bench: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
