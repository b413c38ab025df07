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
Reading a run's files is `results.py`; the intervals and paired differences are `stats.py`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from varlit.io import atomic_write, atomic_write_text

from .definitions import SWEEPS
from .results import (
    DREAMBENCH_METRICS,
    EVAL_DIR,
    JUDGE_METRICS,
    METRICS,
    QUALITY,
    SEED_PREFIX,
    SUMMARY,
    RunRow,
    find_runs,
    read_validation_curve,
)
from .results import CollectError as CollectError  # re-exported: collect's readers raise it
from .stats import Spread, paired_differences
from .stats import t95 as t95  # re-exported

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


def _mean(values: Sequence[float | None]) -> float | None:
    have = [v for v in values if v is not None]
    return sum(have) / len(have) if have else None


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
