"""What one run of a sweep leaves on disk, and reading it back: the folder layout and its files.

A run folder `<sweep dir>/<subject>/<variant>[/seed<k>]/` holds the fit's `summary.json` and/or the
evaluation's `eval/metrics.json`, and the fit's per-step validation in `csv/metrics.csv`. The runner writes
these names and the collector reads them, so they live here, below both (`runner` and `collect`).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUMMARY = "summary.json"
EVAL_DIR = "eval"
METRICS = "metrics.json"
SEED_PREFIX = "seed"
VAL_METRICS_CSV = Path("csv") / "metrics.csv"

DREAMBENCH_METRICS = ("dino", "clip_i", "clip_t", "pres", "div")
JUDGE_METRICS = (
    "judge_subject_rate",
    "judge_subject_sim",
    "judge_context_acc",
    "judge_class_acc",
    "judge_leakage",
    "judge_class_prior_acc",
)
QUALITY = (*DREAMBENCH_METRICS, *JUDGE_METRICS)


class CollectError(ValueError):
    """A run file exists but cannot be read as what it should be."""


@dataclass
class RunRow:
    subject: str
    variant: str
    values: dict[str, float | int | None] = field(default_factory=dict)
    status: str = "ok"
    preset: str | None = None
    seed: str | None = None
    dir: Path | None = None
    notes: list[str] = field(default_factory=list)


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CollectError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise CollectError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _number(value: Any, path: Path, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CollectError(f"{path}: field {name!r} should be a number or null, got {value!r}")
    return None if math.isnan(value) else float(value)


def read_summary(path: Path) -> dict[str, float | None]:
    """The cost columns of a fit's summary.json."""
    data = _load_json(path)
    out: dict[str, float | None] = {}
    for name in (
        "trainable_params",
        "total_params",
        "sec_per_step",
        "peak_memory_bytes",
        "steps",
        "adapter_bytes",
    ):
        out[name] = _number(data.get(name), path, name)
    final = data.get("final") or {}
    if not isinstance(final, dict):
        raise CollectError(f"{path}: field 'final' should be an object of final losses, got {final!r}")
    out["final_loss"] = _number(final.get("train/loss"), path, "final.train/loss")
    return out


def read_metrics(path: Path) -> dict[str, float | None]:
    """The quality columns of an evaluation's metrics.json (its `overall` entry; absent ones are None)."""
    data = _load_json(path)
    overall = data.get("overall")
    if not isinstance(overall, dict):
        raise CollectError(
            f"{path}: missing the 'overall' object of metrics (dino, clip_i, clip_t, pres, div)"
        )
    return {name: _number(overall.get(name), path, f"overall.{name}") for name in QUALITY}


def read_notes(path: Path) -> list[str]:
    """The evaluation's caveats (random-initialised backbones, skipped metrics), if it lists any."""
    notes = _load_json(path).get("notes") or []
    return [str(n) for n in notes] if isinstance(notes, list) else []


def _run_preset(run_dir: Path) -> str | None:
    """The model preset of a run, from its saved config (to label tiny random-initialised results)."""
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None
    model = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(model, dict):
        return None
    preset = model.get("preset")
    return None if preset is None else str(preset)


def find_runs(sweep_dir: Path) -> list[RunRow]:
    """Every `<subject>/<variant>` folder under the sweep folder that has a summary or metrics."""
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder {sweep_dir} does not exist")
    rows = []
    for subject_dir in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for variant_dir in sorted(p for p in subject_dir.iterdir() if p.is_dir()):
            seeds = sorted(
                (p for p in variant_dir.iterdir() if p.is_dir() and _seed_of(p) is not None),
                key=lambda p: int(_seed_of(p) or 0),
            )
            for run_dir in [variant_dir, *seeds]:
                row = _read_run(subject_dir.name, variant_dir.name, run_dir)
                if row is not None:
                    rows.append(row)
    return rows


def _seed_of(path: Path) -> str | None:
    rest = path.name[len(SEED_PREFIX) :]
    return rest if path.name.startswith(SEED_PREFIX) and rest.isdigit() else None


def _read_run(subject: str, variant: str, run_dir: Path) -> RunRow | None:
    summary, metrics = run_dir / SUMMARY, run_dir / EVAL_DIR / METRICS
    if not (summary.is_file() or metrics.is_file()):
        return None
    row = RunRow(subject, variant, preset=_run_preset(run_dir), seed=_seed_of(run_dir), dir=run_dir)
    missing = []
    if summary.is_file():
        row.values.update(read_summary(summary))
    else:
        missing.append("no summary.json")
    if metrics.is_file():
        row.values.update(read_metrics(metrics))
        row.notes = read_notes(metrics)
    else:
        curve = read_validation_curve(run_dir, QUALITY)
        if curve:  # a sweep run with --no-eval: the fit's last validation is its score
            last = max(curve)
            row.values.update({m: curve[last].get(m) for m in QUALITY})
            row.notes = ["runs without an evaluation are scored by their last validation"]
        else:
            missing.append("no metrics")
    row.status = "; ".join(missing) or "ok"
    return row


def read_validation_curve(run_dir: Path, metrics: Sequence[str]) -> dict[int, dict[str, float]]:
    """step -> {metric: value} from a run's `csv/metrics.csv` (`val/<metric>` columns); {} if absent."""
    path = run_dir / VAL_METRICS_CSV
    if not path.is_file():
        return {}
    out: dict[int, dict[str, float]] = {}
    with open(path, newline="") as fh:
        for rec in csv.DictReader(fh):
            values = {m: float(rec[f"val/{m}"]) for m in metrics if rec.get(f"val/{m}") not in (None, "")}
            if values and rec.get("step") not in (None, ""):
                out.setdefault(int(float(rec["step"])) + 1, {}).update(
                    values
                )  # step k logs after k+1 updates
    return out
