"""Run a sweep: for each subject x variant, `varlit fit` then `varlit eval`, as subprocesses, resumably.

Layout: run `<root>/<sweep>/<subject>/<variant>/` (the fit's own run folder: run.name is
`<sweep>/<subject>/<variant>`), its evaluation in `eval/metrics.json` beside it, the subprocess output in
`fit.log` / `eval.log`, and `sweep_run.json`, which records the exact arguments of the fit and eval that
produced the files. In wandb every run of a sweep has group `<sweep>`, tag `<variant>` and job type `sweep`.

Resuming: a run whose `summary.json` exists from a fit with the same arguments is not trained again, and
its evaluation is not repeated once `eval/metrics.json` exists; a fit killed half-way restarts from its
`checkpoints/last.ckpt`. Changing STEPS, the config or the variant's overrides re-runs the fit (and eval).

Subprocesses run with this interpreter (`python -m varlit.cli`), in the current directory, so relative
paths in configs resolve as they do for `varlit fit`. A failed run is reported and the sweep goes on; the
exit status says whether anything failed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from varlit.io import atomic_write_json

from .definitions import Sweep, Variant, num_coarse, scale_ramp
from .results import EVAL_DIR, METRICS, SUMMARY, read_metrics, read_summary
from .subjects import SubjectChoice, num_scales, read_config_values, resolve_subjects

ADAPTER = "adapter.safetensors"
MARKER = "sweep_run.json"
LAST_CKPT = Path("checkpoints") / "last.ckpt"
JOB_TYPE = "sweep"
# Set by `wandb agent` for the run it launched; the eval subprocess must not attach itself to that run.
AGENT_ENV = ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH")


@dataclass(frozen=True)
class RunSpec:
    """One (subject, variant) of a sweep: where it lives and the two commands that make it."""

    sweep: str
    subject: SubjectChoice
    variant: Variant
    root: Path
    fit_args: tuple[str, ...]
    eval_args: tuple[str, ...]
    wandb_project: str | None = None  # where the evaluation is logged (None: not logged)
    seed: int | None = None  # None: the config's seed, folder without a seed level

    @property
    def name(self) -> str:
        return run_name(self.sweep, self.subject.label, self.variant.name, self.seed)

    @property
    def dir(self) -> Path:
        return self.root / self.name

    @property
    def metrics_path(self) -> Path:
        return self.dir / EVAL_DIR / METRICS


@dataclass
class RunResult:
    spec: RunSpec
    fit: str  # done | skipped | failed
    eval: str  # done | skipped | missing (no `varlit eval` command) | failed | not run
    seconds: float = 0.0
    log: Path | None = None


@dataclass
class SweepOptions:
    """What `python -m varlit.sweeps run` (and `make ablate-*`) was asked for."""

    configs: list[str]
    subjects: list[str] = field(default_factory=list)
    steps: int | None = None
    root: str = "runs"
    variants: list[str] = field(default_factory=list)  # empty: all of the sweep's
    extra: list[str] = field(default_factory=list)  # appended to every fit (and eval) command
    evaluate: bool = True
    force: bool = False
    dreambench_root: str | None = None
    seeds: list[int] = field(default_factory=list)  # empty: one run per subject x variant, the config's seed


def run_name(sweep: str, subject: str, variant: str, seed: int | None) -> str:
    """`<sweep>/<subject>/<variant>`, plus `/seed<k>` for a seeded run (the collector reads both)."""
    base = f"{sweep}/{subject}/{variant}"
    return base if seed is None else f"{base}/seed{seed}"


def seed_overrides(seed: int | None) -> list[str]:
    """A seeded run varies every source of training randomness: Lightning's global seed, the module's
    per-step seed (flips, teacher samples, dropout) and the data module's batch order. Evaluation keeps
    its own sampling seeds, so every run is scored on the same draws."""
    if seed is None:
        return []
    return [f"--seed_everything={seed}", f"--model.seed={seed}", f"--data.seed={seed}"]


# Which command an extra `--key=value` goes to, by the key's first part; unlisted keys go to both.
FIT_ONLY = ("trainer", "ckpt_path", "seed_everything", "optimizer", "lr_scheduler")
EVAL_ONLY = ("eval", "out")


def split_extra(extra: Sequence[str]) -> tuple[list[str], list[str]]:
    """(fit args, eval args) of the user's extra arguments: `trainer.*` only reach fit, `eval.*` only eval,
    `model.*`, `data.*`, `run.*` both (the two commands read the same config sections)."""
    fit: list[str] = []
    evaluate: list[str] = []
    items = list(extra)
    i = 0
    while i < len(items):
        arg = items[i]
        group = [arg]
        if (
            arg.startswith("--")
            and "=" not in arg
            and i + 1 < len(items)
            and not items[i + 1].startswith("--")
        ):
            group.append(items[i + 1])
        head = arg.lstrip("-").split("=", 1)[0].split(".", 1)[0]
        if head not in EVAL_ONLY:
            fit += group
        if head not in FIT_ONLY:
            evaluate += group
        i += len(group)
    return fit, evaluate


def varlit_command() -> list[str]:
    """This interpreter running the `varlit` console script's module (no dependence on PATH)."""
    return [sys.executable, "-m", "varlit.cli"]


def plan(sweep: Sweep, opts: SweepOptions) -> list[RunSpec]:
    """Every run of the sweep, in subject-major order, with its exact fit and eval arguments."""
    if not opts.configs:
        raise ValueError("a sweep needs at least one --config file")
    if opts.steps is not None and opts.steps < 1:
        raise ValueError(f"steps must be at least 1, got {opts.steps}")
    if len(set(opts.seeds)) != len(opts.seeds) or any(k < 0 for k in opts.seeds):
        raise ValueError(f"seeds must be distinct non-negative integers, got {opts.seeds}")
    values = read_config_values(opts.configs, opts.extra)
    fit_extra, eval_extra = split_extra(opts.extra)
    where = " + ".join(str(c) for c in opts.configs)
    subjects = resolve_subjects(opts.subjects, values, where, opts.dreambench_root)
    variants = [sweep.variant(n) for n in opts.variants] if opts.variants else list(sweep.variants)
    root = Path(opts.root)
    project = (
        str(values.get("run.project") or "varlit") if values.get("run.wandb", True) is not False else None
    )
    specs = []
    seeds: list[int | None] = list(opts.seeds) or [None]
    for subject, variant, seed in ((s, v, k) for s in subjects for v in variants for k in seeds):
        name = run_name(sweep.name, subject.label, variant.name, seed)
        run_dir = root / name
        fill = {"{run_dir}": str(run_dir)}
        if variant.uses("{scale_ramp}") or variant.uses("{num_coarse}"):
            n = num_scales({**values, **read_config_values([], subject.overrides)})
            fill["{scale_ramp}"], fill["{num_coarse}"] = scale_ramp(n), str(num_coarse(n))
        configs = [a for c in opts.configs for a in ("--config", str(c))]
        naming = [f"--run.name={name}", f"--run.root={root}"]
        fit = [
            "fit",
            *configs,
            *naming,
            f"--run.group={sweep.name}",
            f"--run.tags={json.dumps([variant.name])}",
            f"--run.job_type={JOB_TYPE}",
            *subject.overrides,
            *([f"--trainer.max_steps={opts.steps}"] if opts.steps is not None else []),
            *variant.render(fill),
            *seed_overrides(seed),
            *(a.replace("{run_dir}", str(run_dir)) for a in fit_extra),
        ]
        evaluate = [
            "eval",
            *configs,
            *naming,
            *subject.overrides,
            *eval_extra,
            f"--out={run_dir / EVAL_DIR}",
        ]
        specs.append(RunSpec(sweep.name, subject, variant, root, tuple(fit), tuple(evaluate), project, seed))
    return specs


# ------------------------------------------------------------------ resumability


def _read_marker(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MARKER
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}  # a marker we cannot read only costs a re-run
    return data if isinstance(data, dict) else {}


def _write_marker(spec: RunSpec, **fields: Any) -> None:
    data = _read_marker(spec.dir)
    data.update(fields)
    atomic_write_json(spec.dir / MARKER, data)


def fit_is_done(spec: RunSpec) -> bool:
    """summary.json and the adapter exist, from a fit with these arguments (or from one we know nothing of)."""
    if not ((spec.dir / SUMMARY).is_file() and (spec.dir / ADAPTER).is_file()):
        return False
    marker = _read_marker(spec.dir)
    if "fit_args" not in marker:
        return True
    return marker["fit_args"] == list(spec.fit_args) and marker.get("fit_status") == "done"


def can_resume_fit(spec: RunSpec) -> bool:
    """A fit with these arguments started, was killed, and left a last checkpoint to continue from."""
    marker = _read_marker(spec.dir)
    return marker.get("fit_args") == list(spec.fit_args) and (spec.dir / LAST_CKPT).is_file()


def eval_is_done(spec: RunSpec) -> bool:
    return spec.metrics_path.is_file() and _read_marker(spec.dir).get("eval_args") in (
        None,
        list(spec.eval_args),
    )


# ------------------------------------------------------------------ execution

Runner = Callable[[list[str], Path, dict[str, str]], int]


def run_logged(argv: list[str], log: Path, env: dict[str, str]) -> int:
    """Run argv with stdout and stderr appended to `log`; its exit status."""
    import subprocess

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(argv)}\n")
        fh.flush()
        return subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False).returncode


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + t for t in text[-lines:])


def _eval_unavailable(log: Path) -> bool:
    """`varlit` answered that it has no `eval` command (an install that predates it)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return False
    return "unknown command 'eval'" in text


def execute(
    spec: RunSpec,
    evaluate: bool = True,
    force: bool = False,
    runner: Runner = run_logged,
    echo: Callable[[str], None] = print,
) -> RunResult:
    """Fit (unless done), then evaluate (unless done or switched off); never raises for a failed subprocess."""
    t0 = time.perf_counter()
    spec.dir.mkdir(parents=True, exist_ok=True)
    base = varlit_command()
    env = dict(os.environ)
    # Sweep arms log to files: no wandb console capture and no sync banner in every fit.log (the user's
    # own setting wins).
    env.setdefault("WANDB_CONSOLE", "off")
    env.setdefault("WANDB_SILENT", "true")
    fit_log, eval_log = spec.dir / "fit.log", spec.dir / "eval.log"
    refit = force or not fit_is_done(spec)
    if refit:
        args = list(spec.fit_args)
        if not force and can_resume_fit(spec):
            args.append("--ckpt_path=last")
            echo(f"  {spec.name}: resuming the killed fit from {spec.dir / LAST_CKPT}")
        else:
            args.append("--run.overwrite=true")  # the sweep owns this folder and has decided to fit it anew
        _write_marker(
            spec, fit_args=list(spec.fit_args), fit_status="started", eval_args=None, eval_status=None
        )
        spec.metrics_path.unlink(missing_ok=True)  # it scored the previous adapter
        rc = runner([*base, *args], fit_log, env)
        if rc != 0 or not (spec.dir / SUMMARY).is_file():
            _write_marker(spec, fit_status="failed")
            echo(f"  {spec.name}: fit FAILED (exit {rc}); last lines of {fit_log}:\n{_tail(fit_log)}")
            return RunResult(spec, "failed", "not run", time.perf_counter() - t0, fit_log)
        _write_marker(spec, fit_status="done")
        fit_state = "done"
    else:
        fit_state = "skipped"
    if not evaluate:
        return RunResult(spec, fit_state, "not run", time.perf_counter() - t0)
    if not refit and eval_is_done(spec):
        return RunResult(spec, fit_state, "skipped", time.perf_counter() - t0)
    eval_env = {k: v for k, v in env.items() if k not in AGENT_ENV}
    rc = runner([*base, *spec.eval_args], eval_log, eval_env)
    if rc != 0 and _eval_unavailable(eval_log):
        _write_marker(spec, eval_status="missing")
        echo(f"  {spec.name}: this varlit has no `eval` command; metrics recorded as missing")
        return RunResult(spec, fit_state, "missing", time.perf_counter() - t0, eval_log)
    if rc != 0 or not spec.metrics_path.is_file():
        _write_marker(spec, eval_status="failed")
        echo(f"  {spec.name}: eval FAILED (exit {rc}); last lines of {eval_log}:\n{_tail(eval_log)}")
        return RunResult(spec, fit_state, "failed", time.perf_counter() - t0, eval_log)
    _write_marker(spec, eval_args=list(spec.eval_args), eval_status="done")
    if spec.wandb_project:
        _log_to_wandb(spec)
    return RunResult(spec, fit_state, "done", time.perf_counter() - t0)


def _log_to_wandb(spec: RunSpec) -> None:
    from .wandb_log import log_eval_run

    costs = read_summary(spec.dir / SUMMARY)
    log_eval_run(
        spec.dir,
        spec.name,
        spec.wandb_project or "varlit",
        spec.sweep,
        spec.variant.name,
        spec.subject.label,
        read_metrics(spec.metrics_path),
        costs,
    )


def run_sweep(
    sweep: Sweep,
    opts: SweepOptions,
    runner: Runner = run_logged,
    echo: Callable[[str], None] = print,
    fail_fast: bool = False,
) -> list[RunResult]:
    """Every planned run in turn; returns their results (the caller collects the summary)."""
    specs = plan(sweep, opts)
    echo(f"{sweep.name}: {len(specs)} runs under {Path(opts.root) / sweep.name} ({sweep.description})")
    results = []
    for i, spec in enumerate(specs, 1):
        r = execute(spec, evaluate=opts.evaluate, force=opts.force, runner=runner, echo=echo)
        echo(f"[{i}/{len(specs)}] {spec.name}: fit {r.fit}, eval {r.eval} ({r.seconds:.1f} s)")
        results.append(r)
        if fail_fast and "failed" in (r.fit, r.eval):
            break
    return results


def failed(results: Sequence[RunResult]) -> list[RunResult]:
    return [r for r in results if "failed" in (r.fit, r.eval)]
