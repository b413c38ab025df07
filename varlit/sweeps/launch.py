"""Fan a sweep out over many GPUs or nodes: one independent job per DreamBench subject (or per run).

Each job is an ordinary `python -m varlit.sweeps run <sweep> --subjects <s> --no-collect`, so jobs share
nothing but the run folder tree (each writes only its own `<sweep>/<subject>/...` folders) and can be
retried one by one; resumability makes a re-launch skip what is done. When they have all finished,
`python -m varlit.sweeps collect <root>/<sweep>` merges their metrics.

Three ways to run them, none of which needs the network:
- locally (default): a pool with one slot per GPU id in `--gpus`; each job sees only its GPU through
  CUDA_VISIBLE_DEVICES, its output goes to `<root>/<sweep>/.launch/<job>.log`, and the summary is
  collected at the end;
- `--print`: one shell command per job (give each node one line), then the collect command;
- `--slurm FILE`: a SLURM array script, one array task per job.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .definitions import Sweep
from .runner import SweepOptions
from .subjects import read_config_values, resolve_subjects

LAUNCH_DIR = ".launch"


@dataclass(frozen=True)
class Job:
    """One independent unit of work: a sweep run over some subjects and variants."""

    name: str
    args: tuple[str, ...]  # after `python -m varlit.sweeps`


def jobs_for(sweep: Sweep, opts: SweepOptions, per: str = "subject") -> list[Job]:
    """One job per subject (`per="subject"`) or per (subject, variant) (`per="run"`)."""
    if per not in ("subject", "run"):
        raise ValueError(f"per must be 'subject' or 'run', got {per!r}")
    values = read_config_values(opts.configs, opts.extra)
    subjects = resolve_subjects(opts.subjects, values, " + ".join(opts.configs), opts.dreambench_root)
    variants = [sweep.variant(v).name for v in opts.variants] if opts.variants else sweep.names
    common = [a for c in opts.configs for a in ("--config", str(c))] + ["--root", str(opts.root)]
    if opts.steps is not None:
        common += ["--steps", str(opts.steps)]
    if opts.seeds:
        common += ["--seeds", ",".join(map(str, opts.seeds))]
    if not opts.evaluate:
        common.append("--no-eval")
    if opts.force:
        common.append("--force")
    if opts.dreambench_root:
        common += ["--dreambench-root", opts.dreambench_root]
    tail = ["--no-collect", *(["--", *opts.extra] if opts.extra else [])]
    jobs = []
    for s in subjects:
        pick = ["--subjects", s.chosen] if s.chosen else []
        if per == "subject":
            only = ["--variants", ",".join(variants)] if opts.variants else []
            jobs.append(Job(s.label, ("run", sweep.name, *common, *pick, *only, *tail)))
        else:
            for v in variants:
                jobs.append(
                    Job(f"{s.label}--{v}", ("run", sweep.name, *common, *pick, "--variants", v, *tail))
                )
    return jobs


def collect_args(sweep: Sweep, opts: SweepOptions) -> list[str]:
    return ["collect", str(Path(opts.root) / sweep.name)]


def parse_gpus(text: str) -> list[str]:
    """GPU ids: '0' -> ['0'], '0,1,3' -> ['0', '1', '3']; 'count:4' -> ['0', '1', '2', '3'];
    'cpu:2' -> 2 CPU slots (''). A bare number is always an id (`--gpus 0` is GPU 0), never a count."""
    text = text.strip()
    for prefix in ("cpu:", "count:"):
        if text.startswith(prefix):
            n = text[len(prefix) :]
            if not n.isdigit() or int(n) < 1:
                raise ValueError(f"--gpus {text!r}: expected {prefix}N with N >= 1")
            return [""] * int(n) if prefix == "cpu:" else [str(i) for i in range(int(n))]
    ids = [t.strip() for t in text.split(",") if t.strip()]
    if not ids or not all(i.isdigit() for i in ids):
        raise ValueError(f"--gpus {text!r}: expected GPU ids '0' or '0,1,2', 'count:N' or 'cpu:N'")
    if len(set(ids)) != len(ids):
        raise ValueError(f"--gpus {text!r}: a GPU id is listed twice")
    return ids


def print_commands(sweep: Sweep, opts: SweepOptions, jobs: Sequence[Job], gpus: Sequence[str]) -> str:
    """Shell lines: one per job (round-robin CUDA_VISIBLE_DEVICES when GPUs are given), then the collect."""
    lines = [f"# {sweep.name}: {len(jobs)} independent jobs; run each on its own GPU or node, then collect"]
    for i, job in enumerate(jobs):
        prefix = f"CUDA_VISIBLE_DEVICES={gpus[i % len(gpus)]} " if gpus else ""
        lines.append(prefix + shlex.join(["python", "-m", "varlit.sweeps", *job.args]))
    lines.append(shlex.join(["python", "-m", "varlit.sweeps", *collect_args(sweep, opts)]))
    return "\n".join(lines) + "\n"


def slurm_script(
    sweep: Sweep,
    opts: SweepOptions,
    jobs: Sequence[Job],
    partition: str | None = None,
    time_limit: str = "04:00:00",
    max_parallel: int | None = None,
    script_path: str = "THIS_SCRIPT",
) -> str:
    """A SLURM array script: task i runs job i on one GPU. Submit it, then the collect after it."""
    throttle = f"%{max_parallel}" if max_parallel else ""
    logs = Path(opts.root) / sweep.name / LAUNCH_DIR
    cases = "\n".join(f"  {i}) ARGS=({shlex.join(job.args)}) ;;  # {job.name}" for i, job in enumerate(jobs))
    collect = shlex.join(["python", "-m", "varlit.sweeps", *collect_args(sweep, opts)])
    return (
        "#!/bin/bash\n"
        f"# {sweep.name}: {len(jobs)} jobs as a SLURM array (generated by `python -m varlit.sweeps launch --slurm`).\n"
        f"#   mkdir -p {logs} && jid=$(sbatch --parsable {script_path})\n"
        f'#   sbatch --dependency=afterany:$jid --wrap "{collect}"\n'
        "# Run it from the repository root with the varlit environment active (configs use relative paths).\n"
        f"#SBATCH --job-name={sweep.name}\n"
        f"#SBATCH --array=0-{len(jobs) - 1}{throttle}\n"
        "#SBATCH --gres=gpu:1\n"
        "#SBATCH --cpus-per-task=8\n"
        f"#SBATCH --time={time_limit}\n"
        f"#SBATCH --output={logs}/%A_%a.log\n"
        + (f"#SBATCH --partition={partition}\n" if partition else "")
        + "set -euo pipefail\n"
        'case "$SLURM_ARRAY_TASK_ID" in\n'
        f"{cases}\n"
        '  *) echo "no job for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;\n'
        "esac\n"
        'exec python -m varlit.sweeps "${ARGS[@]}"\n'
    )


def run_local(
    jobs: Sequence[Job],
    slots: Sequence[str],
    log_dir: Path,
    command: Callable[[Job], list[str]] | None = None,
    echo: Callable[[str], None] = print,
    poll_s: float = 0.2,
) -> dict[str, int]:
    """Run the jobs, at most one per slot at a time, each with CUDA_VISIBLE_DEVICES set to its slot.

    Returns job name -> exit status. Ctrl-C terminates the jobs it started.
    """
    if not slots:
        raise ValueError("no slots to run jobs on (give --gpus)")
    make = command or (lambda job: [sys.executable, "-m", "varlit.sweeps", *job.args])
    log_dir.mkdir(parents=True, exist_ok=True)
    pending = list(jobs)
    free = list(slots)
    running: dict[subprocess.Popen, tuple[Job, str, object]] = {}
    status: dict[str, int] = {}
    try:
        while pending or running:
            while pending and free:
                job, slot = pending.pop(0), free.pop(0)
                env = {**os.environ, "CUDA_VISIBLE_DEVICES": slot}
                if not slot and "VARLIT_THREADS" not in os.environ:  # CPU slots share the cores evenly
                    env["VARLIT_THREADS"] = str(max(1, (os.cpu_count() or 1) // len(slots)))
                fh = open(log_dir / f"{job.name}.log", "w")  # closed when the job ends
                proc = subprocess.Popen(make(job), stdout=fh, stderr=subprocess.STDOUT, env=env)
                running[proc] = (job, slot, fh)
                echo(
                    f"started {job.name} on {'GPU ' + slot if slot else 'CPU'} (log: {log_dir / job.name}.log)"
                )
            for proc in [p for p in running if p.poll() is not None]:
                job, slot, fh = running.pop(proc)
                fh.close()
                free.append(slot)
                status[job.name] = proc.returncode
                echo(f"finished {job.name}: {'ok' if proc.returncode == 0 else f'exit {proc.returncode}'}")
            if running:
                time.sleep(poll_s)
    finally:
        for proc, (job, _, fh) in running.items():
            proc.terminate()
            proc.wait()
            fh.close()
            status.setdefault(job.name, proc.returncode)
    return status
