"""Merge the runs of a sweep folder into `summary.md`, `summary.csv`, `runs.csv` and `summary.png`.

A run is a folder `<sweep dir>/<subject>/<variant>/` holding the fit's `summary.json` (trainable and total
parameters, seconds per step, peak memory, final losses) and/or the evaluation's `eval/metrics.json`
(`{"overall": {"dino", "clip_i", "clip_t", "pres", "div"}, "subjects": {...}}`). Either may be missing
(a run that failed, or one not evaluated yet): its cells stay empty and its status says why.

With seeds (`--seeds`, `make ablate-* SEEDS="0 1 2"`) a run is `<subject>/<variant>/seed<k>/`; both layouts
may be mixed. `runs.csv` has one row per run; `summary.csv`, the markdown table and the chart have one row per
variant: the mean over its runs (subjects x seeds) that have the value, with the sample standard deviation
and a 95 % confidence interval of the mean (Student t, n - 1 degrees of freedom; shown as mean ± half-width).
Runs of different subjects are not exchangeable draws, so read the interval as the spread a reader should
expect when repeating the sweep on these subjects, not as a population claim. When the runs logged
validation metrics at several steps (`csv/metrics.csv`), `curve.csv` and `curve.png` give every variant's
judge (or DINO) metrics against the step, with the same intervals: when to stop.
Variants keep the sweep's order when the folder name is a known sweep, else they are sorted by name.
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
CHARTED_DREAMBENCH = ("dino", "clip_i", "clip_t", "pres")
CHARTED_JUDGE = ("judge_subject_rate", "judge_context_acc", "judge_leakage", "judge_class_prior_acc")
LABELS = {
    "dino": "DINO",
    "clip_i": "CLIP-I",
    "clip_t": "CLIP-T",
    "pres": "PRES",
    "div": "DIV",
    "judge_subject_rate": "subject",
    "judge_subject_sim": "subj. sim",
    "judge_context_acc": "context",
    "judge_class_acc": "class",
    "judge_leakage": "leakage",
    "judge_class_prior_acc": "class prior",
}
BETTER = {m: "higher" for m in QUALITY} | {"pres": "lower", "judge_leakage": "lower"}
COST = (
    "trainable_params",
    "total_params",
    "sec_per_step",
    "peak_memory_bytes",
    "steps",
    "final_loss",
    "adapter_bytes",
)
SPREAD = tuple(f"{m}_{k}" for m in QUALITY for k in ("std", "ci95", "n"))
RUN_COLUMNS = ("subject", "variant", "seed", "status", *QUALITY, *COST)
SUMMARY_COLUMNS = (
    "variant",
    "subjects",
    "seeds",
    "runs",
    *QUALITY,
    "trainable_params",
    "trainable_pct",
    *COST[1:],
    *SPREAD,
)
SEED_PREFIX = "seed"
VAL_METRICS_CSV = Path("csv") / "metrics.csv"
# Two-sided 95 % Student t quantiles by degrees of freedom; beyond the table the next lower listed df is
# used (slightly wider: conservative).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
_T95 |= {10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


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


def _mean(values: Sequence[float | None]) -> float | None:
    have = [v for v in values if v is not None]
    return sum(have) / len(have) if have else None


def t95(df: int) -> float:
    """The two-sided 95 % Student t quantile for `df` degrees of freedom (>= 1)."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom, got {df}")
    return _T95[max(k for k in _T95 if k <= df)]


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation and the 95 % interval half-width of the values that exist."""

    n: int
    mean: float | None
    std: float | None
    ci95: float | None

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Spread:
        have = [v for v in values if v is not None]
        n = len(have)
        if n == 0:
            return cls(0, None, None, None)
        mean = sum(have) / n
        if n == 1:
            return cls(1, mean, None, None)
        std = math.sqrt(sum((v - mean) ** 2 for v in have) / (n - 1))
        return cls(n, mean, std, t95(n - 1) * std / math.sqrt(n))


def variant_order(sweep_name: str, rows: Sequence[RunRow]) -> list[str]:
    found = list(dict.fromkeys(r.variant for r in rows))
    known = SWEEPS[sweep_name].names if sweep_name in SWEEPS else []
    return [v for v in known if v in found] + sorted(v for v in found if v not in known)


def summarise(sweep_name: str, rows: Sequence[RunRow]) -> list[dict[str, Any]]:
    """One dict per variant: subjects, seeds and runs (counts), the mean of every column, the spread of
    every quality column (std, ci95, n), trainable %."""
    out = []
    for variant in variant_order(sweep_name, rows):
        group = [r for r in rows if r.variant == variant]
        entry: dict[str, Any] = {
            "variant": variant,
            "subjects": len({r.subject for r in group}),
            "seeds": len({r.seed for r in group}),
            "runs": len(group),
        }
        for name in QUALITY:
            sp = Spread.of([r.values.get(name) for r in group])
            entry[name], entry[f"{name}_std"], entry[f"{name}_ci95"], entry[f"{name}_n"] = (
                sp.mean,
                sp.std,
                sp.ci95,
                sp.n,
            )
        for name in COST:
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


def shown_metrics(rows: Sequence[RunRow]) -> tuple[str, ...]:
    """The quality columns worth a table column: DreamBench's when any run has one of them, the judge's
    likewise (a world sweep has no DINO, a DreamBench sweep no judge)."""
    shown: list[str] = []
    for group in (DREAMBENCH_METRICS, JUDGE_METRICS):
        if any(r.values.get(m) is not None for r in rows for m in group):
            shown += group
    return tuple(shown) or DREAMBENCH_METRICS


def _quality_header(metrics: Sequence[str]) -> list[str]:
    return [f"{LABELS[m]} {'↑' if BETTER[m] == 'higher' else '↓'}" for m in metrics]


def _fmt_spread(entry: dict[str, Any], metric: str) -> str:
    mean, ci = entry.get(metric), entry.get(f"{metric}_ci95")
    if mean is None:
        return "–"
    return f"{mean:.3f} ± {ci:.3f}" if ci is not None else f"{mean:.4f}"


def render_markdown(sweep_name: str, rows: Sequence[RunRow], table: Sequence[dict[str, Any]]) -> str:
    subjects = list(dict.fromkeys(r.subject for r in rows))
    seeds = sorted({r.seed for r in rows if r.seed is not None}, key=int)
    presets = sorted({r.preset for r in rows if r.preset})
    metrics = shown_metrics(rows)
    lines = [f"# {sweep_name}", ""]
    description = SWEEPS[sweep_name].description if sweep_name in SWEEPS else None
    if description:
        lines += [f"Ablation of {description}.", ""]
    seeded = f" x seeds {', '.join(seeds)}" if seeds else ""
    lines.append(
        f"{len(rows)} runs: {len(table)} variants x {len(subjects)} subject(s) ({', '.join(subjects)}){seeded}. "
        "Quality columns: the mean over the runs that have them, ± the half-width of its 95 % interval "
        "(Student t) where there are two runs or more."
    )
    if any(p == "tiny" for p in presets):
        lines += [
            "",
            "**Tiny random-initialised model (preset `tiny`): these numbers exercise the pipeline; "
            "they are not results.**",
        ]
    elif presets:
        lines += ["", f"Model preset(s): {', '.join(presets)}."]
    header = ["variant", "runs", *_quality_header(metrics), "trainable params", "trainable %", "s / step"]
    header += ["adapter", "peak mem"]
    body = [
        [
            e["variant"],
            str(e["runs"]),
            *[_fmt_spread(e, m) for m in metrics],
            _fmt_params(e["trainable_params"]),
            _fmt(e["trainable_pct"], 2),
            _fmt(e["sec_per_step"], 3),
            _fmt_size(e["adapter_bytes"]),
            _fmt_bytes(e["peak_memory_bytes"]),
        ]
        for e in table
    ]
    lines += ["", *_md_table(header, body)]
    if len(rows) > len(table) or any(r.status != "ok" for r in rows):
        lines += ["", "## Runs", ""]
        header = ["subject", "variant", "seed", *[LABELS[m] for m in metrics], "s / step", "status"]
        body = [
            [
                r.subject,
                r.variant,
                r.seed or "–",
                *[_fmt(r.values.get(m)) for m in metrics],
                _fmt(r.values.get("sec_per_step"), 3),
                r.status,
            ]
            for r in rows
        ]
        lines += _md_table(header, body)
    diffs = paired_differences(rows, [e["variant"] for e in table], metrics)
    if diffs:
        ref = table[0]["variant"]
        lines += [
            "",
            f"## Paired differences against `{ref}`",
            "",
            f"Per (subject, seed) run present in both arms: the arm's value minus `{ref}`'s, mean ± the "
            "half-width of its 95 % interval. An interval that contains 0 means the difference is within "
            "the noise of these runs.",
            "",
        ]
        header = ["variant", "pairs", *[LABELS[m] for m in metrics]]
        body = [[d["variant"], str(d["pairs"]), *[_fmt_diff(d.get(m)) for m in metrics]] for d in diffs]
        lines += _md_table(header, body)
    notes = list(dict.fromkeys(n for r in rows for n in r.notes))
    if notes:
        lines += ["", "Notes from the evaluations:", "", *[f"- {n}" for n in notes]]
    lines += [""]
    if any(m in DREAMBENCH_METRICS for m in metrics):
        lines += [
            "DINO, CLIP-I: subject fidelity (image-image cosine to the subject photos); CLIP-T: prompt fidelity; "
            "PRES: DINO between the subject photos and samples of the bare class prompt (lower = less language "
            "drift); DIV: mean pairwise LPIPS among samples of a prompt.",
        ]
    if any(m in JUDGE_METRICS for m in metrics):
        lines += [
            "World judge: subject = share of subject-prompt samples the judge names as the subject (subject "
            "fidelity); subj. sim = judge-embedding cosine to the photos; context / class = share drawn in the "
            "prompt's context / as its class (prompt fidelity); leakage = share of bare class-prompt samples "
            "drawn as the subject, class prior = share of them read as the class (drift).",
        ]
    lines += ["Time per step excludes the first step.", ""]
    return "\n".join(lines)


def paired_differences(
    rows: Sequence[RunRow], variants: Sequence[str], metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """For every variant after the first: per metric, the Spread of (variant - first variant) over the
    (subject, seed) pairs both have. Pairing removes the subject-to-subject spread that the per-arm
    intervals carry, so smaller differences stand out of the noise."""
    if len(variants) < 2:
        return []
    by = {(r.variant, r.subject, r.seed): r for r in rows}
    out = []
    for variant in variants[1:]:
        keys = [
            (r.subject, r.seed)
            for r in rows
            if r.variant == variant and (variants[0], r.subject, r.seed) in by
        ]
        if not keys:
            continue
        entry: dict[str, Any] = {"variant": variant, "pairs": len(keys)}
        for m in metrics:
            deltas = []
            for subject, seed in keys:
                a, b = (
                    by[(variant, subject, seed)].values.get(m),
                    by[(variants[0], subject, seed)].values.get(m),
                )
                deltas.append(None if a is None or b is None else a - b)
            entry[m] = Spread.of(deltas)
        out.append(entry)
    return out


def _fmt_diff(sp: Spread | None) -> str:
    if sp is None or sp.mean is None:
        return "–"
    return f"{sp.mean:+.3f} ± {sp.ci95:.3f}" if sp.ci95 is not None else f"{sp.mean:+.3f}"


def _fmt_size(n: float | None) -> str:
    if n is None:
        return "–"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f} B"


# ------------------------------------------------------------------ per-step validation curves


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


def curves(sweep_name: str, rows: Sequence[RunRow], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One record per (variant, step, metric) that some run validated: mean, std, ci95 and n over runs."""
    out = []
    for variant in variant_order(sweep_name, rows):
        per_run = [read_validation_curve(r.dir, metrics) for r in rows if r.variant == variant and r.dir]
        steps = sorted({s for c in per_run for s in c})
        for step in steps:
            for m in metrics:
                sp = Spread.of([c.get(step, {}).get(m) for c in per_run])
                if sp.n:
                    out.append(
                        {
                            "variant": variant,
                            "step": step,
                            "metric": m,
                            "mean": sp.mean,
                            "std": sp.std,
                            "ci95": sp.ci95,
                            "n": sp.n,
                        }
                    )
    return out


CURVE_COLUMNS = ("variant", "step", "metric", "mean", "std", "ci95", "n")


def unscored(sweep_dir: str | Path, only: set[Path] | None = None) -> list[str]:
    """The runs of a sweep folder (or of its run folders in `only`) that have no metrics (neither an
    evaluation nor a validation scored them): a sweep must not summarise them as if nothing were wrong."""
    rows = find_runs(Path(sweep_dir)) if Path(sweep_dir).is_dir() else []
    return [
        f"{r.subject}/{r.variant}" + (f"/{SEED_PREFIX}{r.seed}" if r.seed is not None else "")
        for r in rows
        if "no metrics" in r.status and (only is None or r.dir.resolve() in only)
    ]


def collect(sweep_dir: str | Path, chart: bool = True) -> dict[str, Path]:
    """Write the summary files into the sweep folder; returns their paths. Raises if it holds no run."""
    sweep_dir = Path(sweep_dir)
    rows = find_runs(sweep_dir)
    if not rows:
        raise FileNotFoundError(
            f"no runs under {sweep_dir}: expected <subject>/<variant>[/seed<k>]/{SUMMARY} or "
            f"<subject>/<variant>[/seed<k>]/{EVAL_DIR}/{METRICS}"
        )
    name = sweep_dir.name
    table = summarise(name, rows)
    run_records = [
        {"subject": r.subject, "variant": r.variant, "seed": r.seed, "status": r.status, **r.values}
        for r in rows
    ]
    paths = {
        "md": atomic_write_text(sweep_dir / "summary.md", render_markdown(name, rows, table)),
        "csv": atomic_write_text(sweep_dir / "summary.csv", _csv(SUMMARY_COLUMNS, table)),
        "runs_csv": atomic_write_text(sweep_dir / "runs.csv", _csv(RUN_COLUMNS, run_records)),
    }
    judged = any(r.values.get(m) is not None for r in rows for m in JUDGE_METRICS)
    charted = CHARTED_JUDGE if judged else CHARTED_DREAMBENCH
    curve = curves(name, rows, charted)
    if len({c["step"] for c in curve}) >= 2:
        paths["curve_csv"] = atomic_write_text(sweep_dir / "curve.csv", _csv(CURVE_COLUMNS, curve))
    if chart:
        from .chart import bar_chart, line_chart

        tiny = any(r.preset == "tiny" for r in rows)
        subtitle = (
            f"mean and 95 % interval over {len(rows)} runs ({len({r.subject for r in rows})} subject(s))"
        )
        if tiny:
            subtitle += " - tiny random-initialised model: not results"
        image = bar_chart(
            groups=[e["variant"] for e in table],
            series=[LABELS[m] for m in charted],
            values=[[e[m] for m in charted] for e in table],
            title=f"{name}: {', '.join(LABELS[m] for m in charted)}",
            subtitle=subtitle,
            errors=[[e[f"{m}_ci95"] for m in charted] for e in table],
        )
        paths["png"] = atomic_write(sweep_dir / "summary.png", lambda tmp: image.save(tmp, format="PNG"))
        if "curve_csv" in paths:
            panels = []
            for m in charted:
                series = {}
                for variant in variant_order(name, rows):
                    pts = [c for c in curve if c["variant"] == variant and c["metric"] == m]
                    if pts:
                        series[variant] = [(c["step"], c["mean"], c["ci95"]) for c in pts]
                if series:
                    panels.append((f"{LABELS[m]} ({BETTER[m]} is better)", series))
            picture = line_chart(
                panels, title=f"{name}: validation metrics against tuning steps", subtitle=subtitle
            )
            paths["curve_png"] = atomic_write(
                sweep_dir / "curve.png", lambda tmp: picture.save(tmp, format="PNG")
            )
    return paths
