"""`python -m varlit.sweeps <command>` (and `varlit sweep <command>`): run, collect and fan out ablations.

  list                      the sweeps, their variants and the fit overrides of each
  run SWEEP --config C      every subject x variant: varlit fit, then varlit eval; then collect
  job SWEEP --variant V     one (subject, variant) of a sweep (what a wandb agent runs)
  collect DIR               merge DIR/<subject>/<variant>/ into DIR/summary.md, .csv, .png
  launch SWEEP --config C   one job per subject on many GPUs (local pool, --print, or --slurm FILE)
  wandb SWEEP|all           write sweeps/wandb/<sweep>.yaml for `wandb sweep`

Arguments after `--` go to every `varlit fit` (and `varlit eval`) unchanged, e.g. `-- --data.cache_dir=/fast`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .definitions import SWEEPS, get_sweep
from .subjects import split_names


def _split_extra(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def _flag(text: str) -> bool:
    """`--flag=true|false` as wandb writes booleans (`--flag` alone means true)."""
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value in ("true", "1")


def _sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", choices=list(SWEEPS), help="which ablation")
    p.add_argument("--config", action="append", required=True, help="config file(s), repeatable, in order")
    p.add_argument(
        "--subjects",
        action="append",
        default=[],
        help="DreamBench subjects, space/comma separated, or 'all'; none: the config's own subject",
    )
    p.add_argument("--steps", type=int, default=None, help="override trainer.max_steps")
    p.add_argument(
        "--seeds",
        action="append",
        default=[],
        help="training seeds, space/comma separated: each run becomes ROOT/SWEEP/SUBJECT/VARIANT/seed<k>",
    )
    p.add_argument("--root", default="runs", help="runs go to ROOT/SWEEP/SUBJECT/VARIANT (default: runs)")
    p.add_argument("--variants", action="append", default=[], help="only these variants (default: all)")
    p.add_argument("--no-eval", action="store_true", help="fit only (metrics stay missing)")
    p.add_argument("--force", action="store_true", help="redo runs that are already done")
    p.add_argument("--dreambench-root", default=None, help="DreamBench folder, to list subjects for 'all'")


def _options(ns: argparse.Namespace, extra: list[str]):
    from .runner import SweepOptions

    return SweepOptions(
        configs=list(ns.config),
        subjects=split_names(ns.subjects),
        steps=ns.steps,
        root=ns.root,
        variants=split_names(ns.variants),
        extra=extra,
        evaluate=not ns.no_eval,
        force=ns.force,
        dreambench_root=ns.dreambench_root,
        seeds=parse_seeds(ns.seeds),
    )


def parse_seeds(values: Sequence[str]) -> list[int]:
    """'0 1 2' / '0,1,2' (repeatable) -> [0, 1, 2]; a word that is not a non-negative integer is named."""
    seeds = []
    for word in split_names(values):
        if not word.isdigit():
            raise ValueError(f"--seeds: {word!r} is not a non-negative integer")
        seeds.append(int(word))
    return seeds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m varlit.sweeps",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[2:]),
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="show the sweeps and their variants")
    p.add_argument("sweep", nargs="?", choices=list(SWEEPS))

    p = sub.add_parser("run", help="run a sweep here, one run after another, then collect")
    _sweep_arguments(p)
    p.add_argument("--no-collect", action="store_true", help="do not write the summary at the end")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failed run")

    p = sub.add_parser("job", help="one (subject, variant) of a sweep (the wandb agent's command)")
    p.add_argument("sweep", choices=list(SWEEPS))
    p.add_argument("--variant", required=True)
    p.add_argument("--subject", default="", help="DreamBench (or world) subject; empty: the config's own")
    p.add_argument("--config", action="append", required=True)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=None, help="training seed: the run goes to .../seed<k>/")
    p.add_argument("--root", default="runs")
    p.add_argument(
        "--no-eval",
        nargs="?",
        const=True,
        default=False,
        type=_flag,
        help="score by the last validation (wandb passes --no-eval=true)",
    )
    p.add_argument("--no-collect", action="store_true")

    p = sub.add_parser("collect", help="write summary.md/.csv/.png of sweep folder(s)")
    p.add_argument("dirs", nargs="+", help="sweep folder(s), e.g. runs/ablate-layers")
    p.add_argument("--no-chart", action="store_true")

    p = sub.add_parser("launch", help="fan a sweep out: one job per subject, over GPUs or nodes")
    _sweep_arguments(p)
    p.add_argument(
        "--gpus",
        default=None,
        help="GPU ids '0' or '0,1,2,3', 'count:N' (ids 0..N-1), or 'cpu:N' (local pool)",
    )
    p.add_argument("--per", choices=("subject", "run"), default="subject", help="job granularity")
    p.add_argument("--print", action="store_true", help="print one command per job instead of running")
    p.add_argument("--slurm", default=None, help="write a SLURM array script to this file instead")
    p.add_argument("--partition", default=None, help="SLURM partition")
    p.add_argument("--time", default="04:00:00", help="SLURM time limit per job")
    p.add_argument("--max-parallel", type=int, default=None, help="SLURM array throttle (%%N)")

    p = sub.add_parser("wandb", help="write the wandb sweep YAML(s)")
    p.add_argument("sweep", choices=[*SWEEPS, "all", "world"])
    p.add_argument("--out", default="sweeps/wandb")
    p.add_argument("--config", default=None, help="default: experiments/dreambench.yaml")
    p.add_argument("--subjects", action="append", default=[], help="default: dog")
    p.add_argument("--root", default="runs")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--force", action="store_true", help="replace YAMLs whose content would change")
    return parser


def _list(name: str | None) -> int:
    for sweep in [get_sweep(name)] if name else SWEEPS.values():
        print(f"{sweep.name}: {sweep.description}")
        for v in sweep.variants:
            print(f"  {v.name:<18} {' '.join(v.overrides)}")
            if v.note:
                print(f"  {'':<18} ({v.note})")
    return 0


def _collect(dirs: Sequence[str], chart: bool) -> int:
    from .collect import collect

    for d in dirs:
        paths = collect(d, chart=chart)
        print(f"{d}: " + ", ".join(str(p) for p in paths.values()))
    return 0


def _check_scored(sweep_dir: str | Path, runs: Sequence[Path] | None = None) -> int:
    """1 (and the runs named) when a run of this sweep (or of `runs`, the run folders this command ran)
    produced no metrics at all: an empty summary is not a result."""
    from .collect import unscored

    only = None if runs is None else {Path(r).resolve() for r in runs}
    bad = [f"{Path(sweep_dir).name}/{name}" for name in unscored(sweep_dir, only)]
    if not bad:
        return 0
    shown = ", ".join(bad[:8]) + (f" (+{len(bad) - 8} more)" if len(bad) > 8 else "")
    print(
        f"{len(bad)} run(s) produced no metrics: {shown}; with EVAL=0 (--no-eval) a run is scored by its "
        "validation, which needs the config's metrics callback (SubjectMetricsCallback): run with EVAL=1, "
        "or add the callback",
        file=sys.stderr,
    )
    return 1


def _run(ns: argparse.Namespace, extra: list[str]) -> int:
    from .runner import failed, run_sweep

    sweep = get_sweep(ns.sweep)
    opts = _options(ns, extra)
    results = run_sweep(sweep, opts, fail_fast=ns.fail_fast)
    if not ns.no_collect and any(r.fit != "failed" for r in results):
        _collect([str(Path(opts.root) / sweep.name)], chart=True)
    unscored = _check_scored(Path(opts.root) / sweep.name, [r.spec.dir for r in results if r.fit != "failed"])
    bad = failed(results)
    missing = [r for r in results if r.eval == "missing"]
    if missing:
        print(f"{len(missing)} run(s) have no metrics: this varlit has no `eval` command", file=sys.stderr)
    if bad:
        print(
            f"{len(bad)} of {len(results)} runs failed: {', '.join(r.spec.name for r in bad)}",
            file=sys.stderr,
        )
        return 1
    return unscored


def _job(ns: argparse.Namespace, extra: list[str]) -> int:
    from .runner import SweepOptions, execute, plan

    sweep = get_sweep(ns.sweep)
    opts = SweepOptions(
        configs=list(ns.config),
        subjects=split_names(ns.subject),
        steps=ns.steps,
        root=ns.root,
        variants=[ns.variant],
        extra=extra,
        seeds=[] if ns.seed is None else [ns.seed],
        evaluate=not ns.no_eval,
    )
    (spec,) = plan(sweep, opts)
    result = execute(spec, evaluate=opts.evaluate)
    print(f"{spec.name}: fit {result.fit}, eval {result.eval} ({result.seconds:.1f} s)")
    if not ns.no_collect and result.fit != "failed":
        _collect([str(Path(opts.root) / sweep.name)], chart=True)
    if "failed" in (result.fit, result.eval):
        return 1
    return _check_scored(Path(opts.root) / sweep.name, [spec.dir])


def _launch(ns: argparse.Namespace, extra: list[str]) -> int:
    from . import launch

    sweep = get_sweep(ns.sweep)
    opts = _options(ns, extra)
    jobs = launch.jobs_for(sweep, opts, per=ns.per)
    gpus = launch.parse_gpus(ns.gpus) if ns.gpus else []
    if ns.slurm:
        from varlit.io import atomic_write_text

        text = launch.slurm_script(sweep, opts, jobs, ns.partition, ns.time, ns.max_parallel, ns.slurm)
        path = atomic_write_text(ns.slurm, text)
        print(f"wrote {path}: a SLURM array of {len(jobs)} jobs (see its header for sbatch + collect)")
        return 0
    if ns.print:
        print(launch.print_commands(sweep, opts, jobs, gpus), end="")
        return 0
    if not gpus:
        print(
            "launch: give --gpus (ids '0,1', 'count:N' or 'cpu:N'), or --print / --slurm FILE",
            file=sys.stderr,
        )
        return 2
    sweep_dir = Path(opts.root) / sweep.name
    status = launch.run_local(jobs, gpus, sweep_dir / launch.LAUNCH_DIR)
    try:
        _collect([str(sweep_dir)], chart=True)
    except FileNotFoundError as err:
        print(f"launch: nothing to collect: {err}", file=sys.stderr)
    from .runner import plan

    unscored = _check_scored(sweep_dir, [spec.dir for spec in plan(sweep, opts)])
    bad = sorted(name for name, code in status.items() if code != 0)
    if bad:
        print(
            f"launch: {len(bad)} job(s) failed: {', '.join(bad)} (logs in {sweep_dir / launch.LAUNCH_DIR})",
            file=sys.stderr,
        )
        return 1
    return unscored


def _wandb(ns: argparse.Namespace) -> int:
    from .wandb_sweep import DEFAULT_CONFIG, DEFAULT_SUBJECTS, write

    if ns.sweep == "world":  # the tables of docs/results.md: every world subject and seed
        from .wandb_sweep import world_sweeps

        jobs = [
            (sweep, ns.out if ns.out != "sweeps/wandb" else "sweeps/wandb/world", kw)
            for sweep, kw in world_sweeps()
        ]
    else:
        names = list(SWEEPS) if ns.sweep == "all" else [ns.sweep]
        subjects = split_names(ns.subjects) or list(DEFAULT_SUBJECTS)
        config = ns.config or DEFAULT_CONFIG
        kw = {"config": config, "subjects": subjects, "root": ns.root, "steps": ns.steps}
        jobs = [(get_sweep(name), ns.out, kw) for name in names]
    status = 0
    for sweep, out, kw in jobs:
        try:
            path, what = write(sweep, out, force=ns.force, **kw)
        except FileExistsError as err:
            print(f"wandb: not written: {err}", file=sys.stderr)
            status = 1
            continue
        print(f"{what} {path}")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    own, extra = _split_extra(sys.argv[1:] if argv is None else argv)
    ns = build_parser().parse_args(own)
    if extra and ns.command not in ("run", "job", "launch"):
        print(f"`{ns.command}` takes no arguments after `--`", file=sys.stderr)
        return 2
    try:
        if ns.command == "list":
            return _list(ns.sweep)
        if ns.command == "collect":
            return _collect(ns.dirs, chart=not ns.no_chart)
        if ns.command == "run":
            return _run(ns, extra)
        if ns.command == "job":
            return _job(ns, extra)
        if ns.command == "launch":
            return _launch(ns, extra)
        return _wandb(ns)
    except (ValueError, FileNotFoundError) as err:
        print(f"varlit sweeps {ns.command}: error: {err}", file=sys.stderr)
        return 2
