"""Merge the runs of a sweep folder into `summary.md`, `summary.csv`, `runs.csv` and `summary.png`.

A run is a folder `<sweep dir>/<subject>/<variant>/` holding the fit's `summary.json` (trainable and total
parameters, seconds per step, peak memory, final losses) and/or the evaluation's `eval/metrics.json`
(`{"overall": {"dino", "clip_i", "clip_t", "pres", "div"}, "subjects": {...}}`). Either may be missing
(a run that failed, or one not evaluated yet): its cells stay empty and its status says why.

`runs.csv` has one row per run; `summary.csv`, the markdown table and the chart have one row per variant,
the mean over the subjects that have the value. Variants keep the sweep's order when the folder name is a
known sweep, else they are sorted by name.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from varlit.io import atomic_write, atomic_write_text

from .definitions import SWEEPS
from .runner import EVAL_DIR, METRICS, SUMMARY

QUALITY = ("dino", "clip_i", "clip_t", "pres", "div")
CHARTED = ("dino", "clip_i", "clip_t", "pres")
LABELS = {"dino": "DINO", "clip_i": "CLIP-I", "clip_t": "CLIP-T", "pres": "PRES", "div": "DIV"}
BETTER = {"dino": "higher", "clip_i": "higher", "clip_t": "higher", "pres": "lower", "div": "higher"}
COST = ("trainable_params", "total_params", "sec_per_step", "peak_memory_bytes", "steps", "final_loss")
RUN_COLUMNS = ("subject", "variant", "status", *QUALITY, *COST)
SUMMARY_COLUMNS = ("variant", "subjects", *QUALITY, "trainable_params", "trainable_pct", *COST[1:])


class CollectError(ValueError):
    """A run file exists but cannot be read as what it should be."""


@dataclass
class RunRow:
    subject: str
    variant: str
    values: dict[str, float | int | None] = field(default_factory=dict)
    status: str = "ok"
    preset: str | None = None
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
    for name in ("trainable_params", "total_params", "sec_per_step", "peak_memory_bytes", "steps"):
        out[name] = _number(data.get(name), path, name)
    final = data.get("final") or {}
    if not isinstance(final, dict):
        raise CollectError(f"{path}: field 'final' should be an object of final losses, got {final!r}")
    out["final_loss"] = _number(final.get("train/loss"), path, "final.train/loss")
    return out


def read_metrics(path: Path) -> dict[str, float | None]:
    """The quality columns of an evaluation's metrics.json (its `overall` entry)."""
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
        for run_dir in sorted(p for p in subject_dir.iterdir() if p.is_dir()):
            summary, metrics = run_dir / SUMMARY, run_dir / EVAL_DIR / METRICS
            if not (summary.is_file() or metrics.is_file()):
                continue
            row = RunRow(subject_dir.name, run_dir.name, preset=_run_preset(run_dir))
            missing = []
            if summary.is_file():
                row.values.update(read_summary(summary))
            else:
                missing.append("no summary.json")
            if metrics.is_file():
                row.values.update(read_metrics(metrics))
                row.notes = read_notes(metrics)
            else:
                missing.append("no metrics")
            row.status = "; ".join(missing) or "ok"
            rows.append(row)
    return rows


def _mean(values: Sequence[float | None]) -> float | None:
    have = [v for v in values if v is not None]
    return sum(have) / len(have) if have else None


def variant_order(sweep_name: str, rows: Sequence[RunRow]) -> list[str]:
    found = list(dict.fromkeys(r.variant for r in rows))
    known = SWEEPS[sweep_name].names if sweep_name in SWEEPS else []
    return [v for v in known if v in found] + sorted(v for v in found if v not in known)


def summarise(sweep_name: str, rows: Sequence[RunRow]) -> list[dict[str, Any]]:
    """One dict per variant: subjects (count), the mean of every column, trainable %."""
    out = []
    for variant in variant_order(sweep_name, rows):
        group = [r for r in rows if r.variant == variant]
        entry: dict[str, Any] = {"variant": variant, "subjects": len(group)}
        for name in (*QUALITY, *COST):
            entry[name] = _mean([r.values.get(name) for r in group])
        t, tot = entry["trainable_params"], entry["total_params"]
        entry["trainable_pct"] = 100.0 * t / tot if t is not None and tot else None
        out.append(entry)
    return out


# ------------------------------------------------------------------ formatting


def _fmt_params(n: float | None) -> str:
    if n is None:
        return "–"
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _fmt_bytes(n: float | None) -> str:
    return "–" if n is None else f"{n / 2**30:.2f} GiB"


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)
    return v


def _csv(columns: Sequence[str], records: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow({c: _csv_value(r.get(c)) for c in columns})
    return buf.getvalue()


def _md_table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return out


def _quality_header() -> list[str]:
    return [f"{LABELS[m]} {'↑' if BETTER[m] == 'higher' else '↓'}" for m in QUALITY]


def render_markdown(sweep_name: str, rows: Sequence[RunRow], table: Sequence[dict[str, Any]]) -> str:
    subjects = list(dict.fromkeys(r.subject for r in rows))
    presets = sorted({r.preset for r in rows if r.preset})
    lines = [f"# {sweep_name}", ""]
    description = SWEEPS[sweep_name].description if sweep_name in SWEEPS else None
    if description:
        lines += [f"Ablation of {description}.", ""]
    lines.append(
        f"{len(rows)} runs: {len(table)} variants x {len(subjects)} subject(s) ({', '.join(subjects)}); "
        "quality columns are means over the subjects that have them."
    )
    if any(p == "tiny" for p in presets):
        lines += [
            "",
            "**Tiny random-initialised model (preset `tiny`): these numbers exercise the pipeline; "
            "they are not results.**",
        ]
    elif presets:
        lines += ["", f"Model preset(s): {', '.join(presets)}."]
    header = [
        "variant",
        "subjects",
        *_quality_header(),
        "trainable params",
        "trainable %",
        "s / step",
        "peak mem",
    ]
    body = [
        [
            e["variant"],
            str(e["subjects"]),
            *[_fmt(e[m]) for m in QUALITY],
            _fmt_params(e["trainable_params"]),
            _fmt(e["trainable_pct"], 2),
            _fmt(e["sec_per_step"], 3),
            _fmt_bytes(e["peak_memory_bytes"]),
        ]
        for e in table
    ]
    lines += ["", *_md_table(header, body)]
    if len(subjects) > 1 or any(r.status != "ok" for r in rows):
        lines += ["", "## Runs", ""]
        header = [
            "subject",
            "variant",
            *[LABELS[m] for m in QUALITY],
            "trainable params",
            "s / step",
            "status",
        ]
        body = [
            [
                r.subject,
                r.variant,
                *[_fmt(r.values.get(m)) for m in QUALITY],
                _fmt_params(r.values.get("trainable_params")),
                _fmt(r.values.get("sec_per_step"), 3),
                r.status,
            ]
            for r in rows
        ]
        lines += _md_table(header, body)
    notes = list(dict.fromkeys(n for r in rows for n in r.notes))
    if notes:
        lines += ["", "Notes from the evaluations:", "", *[f"- {n}" for n in notes]]
    lines += [
        "",
        "DINO, CLIP-I: subject fidelity (image-image cosine to the subject photos); CLIP-T: prompt fidelity; "
        "PRES: DINO between the subject photos and samples of the bare class prompt (lower = less language "
        "drift); DIV: mean pairwise LPIPS among samples of a prompt. Time per step excludes the first step.",
        "",
    ]
    return "\n".join(lines)


def collect(sweep_dir: str | Path, chart: bool = True) -> dict[str, Path]:
    """Write the summary files into the sweep folder; returns their paths. Raises if it holds no run."""
    sweep_dir = Path(sweep_dir)
    rows = find_runs(sweep_dir)
    if not rows:
        raise FileNotFoundError(
            f"no runs under {sweep_dir}: expected <subject>/<variant>/{SUMMARY} or "
            f"<subject>/<variant>/{EVAL_DIR}/{METRICS}"
        )
    name = sweep_dir.name
    table = summarise(name, rows)
    run_records = [{"subject": r.subject, "variant": r.variant, "status": r.status, **r.values} for r in rows]
    paths = {
        "md": atomic_write_text(sweep_dir / "summary.md", render_markdown(name, rows, table)),
        "csv": atomic_write_text(sweep_dir / "summary.csv", _csv(SUMMARY_COLUMNS, table)),
        "runs_csv": atomic_write_text(sweep_dir / "runs.csv", _csv(RUN_COLUMNS, run_records)),
    }
    if chart:
        from .chart import bar_chart

        tiny = any(r.preset == "tiny" for r in rows)
        subtitle = f"mean over {len({r.subject for r in rows})} subject(s)"
        if tiny:
            subtitle += " - tiny random-initialised model: not results"
        image = bar_chart(
            groups=[e["variant"] for e in table],
            series=[LABELS[m] for m in CHARTED],
            values=[[e[m] for m in CHARTED] for e in table],
            title=f"{name}: {', '.join(LABELS[m] for m in CHARTED)}",
            subtitle=subtitle,
        )
        paths["png"] = atomic_write(sweep_dir / "summary.png", lambda tmp: image.save(tmp, format="PNG"))
    return paths
