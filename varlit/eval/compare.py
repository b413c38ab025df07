"""`varlit compare BEFORE AFTER`: two `varlit eval` folders side by side, as a table and as one picture.

The usual pair is the base model (`--eval.adapters base`) and the tuned adapter on the same prompts and
seeds: the table says what tuning changed (subject learned, contexts kept, class prior kept), the picture
shows it: the subject photos, then per prompt the base samples next to the tuned ones, then the bare class
prompt (drift). Both folders must hold the same subjects; a prompt present in only one is left out of the
picture and the per-prompt view (the averages are each folder's own).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from varlit.io import atomic_write_json, atomic_write_text

METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class Measure:
    key: str  # the metrics.json `overall` key
    label: str
    higher_is_better: bool
    percent: bool  # a share of samples (shown as %), else a score


MEASURES: tuple[Measure, ...] = (
    Measure("judge_subject_rate", "subject recognition (judge names the subject)", True, True),
    Measure("judge_subject_sim", "subject similarity (judge-embedding cosine to the photos)", True, False),
    Measure("judge_context_acc", "context accuracy (prompt's context drawn)", True, True),
    Measure("judge_class_acc", "class accuracy on subject prompts", True, True),
    Measure("judge_leakage", "leakage (bare class prompt drawn as the subject)", False, True),
    Measure("judge_class_prior_acc", "class prior kept (bare class prompt read as the class)", True, True),
    Measure("dino", "DINO", True, False),
    Measure("clip_i", "CLIP-I", True, False),
    Measure("clip_t", "CLIP-T", True, False),
    Measure("pres", "PRES (lower = less drift)", False, False),
)


def read_eval(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; give the --out folder of a finished `varlit eval`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("subjects"), dict):
        raise ValueError(f"{path}: no 'subjects' object; is it a `varlit eval` metrics.json?")
    return data


def _fmt(value: float | None, percent: bool) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f} %" if percent else f"{value:.3f}"


def comparison_rows(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per measure present in either folder's overall scores."""
    rows = []
    b_all, a_all = before.get("overall") or {}, after.get("overall") or {}
    for m in MEASURES:
        b, a = b_all.get(m.key), a_all.get(m.key)
        if b is None and a is None:
            continue
        rows.append(
            {
                "metric": m.key,
                "label": m.label,
                "before": b,
                "after": a,
                "change": None if a is None or b is None else a - b,
                "better": "higher" if m.higher_is_better else "lower",
                "percent": m.percent,
            }
        )
    return rows


def sample_set(data: dict[str, Any], subjects: list[str]) -> str:
    """How many samples a side's scores rest on: prompts x seeds per subject, and bare class samples."""
    seeds = len((data.get("settings") or {}).get("seeds") or [])
    entries = [data["subjects"][s] for s in subjects if s in data.get("subjects", {})]
    prompts = sum(len(e.get("prompts") or {}) for e in entries)
    classes = sum(int(e.get("num_class_samples") or 0) for e in entries)
    return f"{prompts} prompts x {seeds} seeds = {prompts * seeds} samples, {classes} class-prompt samples"


def comparison_markdown(
    rows: list[dict[str, Any]],
    before: str,
    after: str,
    subjects: list[str],
    samples: tuple[str, str] | None = None,
) -> str:
    lines = [f"Before: `{before}`. After: `{after}`. Subjects: {', '.join(subjects)}."]
    if samples is not None:
        lines.append(
            f"Scored on `varlit eval`'s samples (before: {samples[0]}; after: {samples[1]}), not on a fit's "
            "validation samples (`summary.json`, `val/*`), which are other and fewer: the two scores of one "
            "adapter differ by that sampling."
        )
    lines += [
        "",
        "| measure | better | before | after |",
        "|---|---|---:|---:|",
    ]
    for r in rows:
        arrow = "↑" if r["better"] == "higher" else "↓"
        lines.append(
            f"| {r['label']} | {arrow} | {_fmt(r['before'], r['percent'])} | {_fmt(r['after'], r['percent'])} |"
        )
    return "\n".join(lines) + "\n"


def _load(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _samples(folder: Path, rel: str) -> list[Path]:
    return sorted((folder / rel).glob("s*.png"), key=lambda p: int(p.stem[1:]))


def _class_samples(folder: Path, subject: str) -> list[Path]:
    return sorted((folder / "images" / subject / "_class").glob("c*.png"))


def side_by_side(
    before_dir: Path, after_dir: Path, before: dict[str, Any], after: dict[str, Any], per_row: int = 4
) -> np.ndarray:
    """Per subject: its photos; per prompt, `per_row` base samples, a gap, `per_row` tuned samples; then the
    bare class prompt the same way (what tuning did to the class prior)."""
    from varlit.world.figures import labelled_grid

    rows: list[list[np.ndarray]] = []
    labels: list[str] = []
    captions: list[list[str]] = []
    for subject, s_after in after["subjects"].items():
        s_before = before["subjects"].get(subject)
        if s_before is None:
            continue
        refs = sorted((after_dir / "images" / subject / "_reference").glob("r*.png"))[: 2 * per_row + 1]
        if refs:
            rows.append([_load(p) for p in refs])
            labels.append(f"{subject}: the subject photos")
            captions.append(["photo"] * len(refs))
        by_template = {v.get("template"): v for v in s_before.get("prompts", {}).values()}
        for prompt, entry in s_after.get("prompts", {}).items():
            b_entry = by_template.get(entry.get("template"))
            if b_entry is None:
                continue
            b = _samples(before_dir, b_entry["dir"])[:per_row]
            a = _samples(after_dir, entry["dir"])[:per_row]
            if not (a and b):
                continue
            gap = np.full_like(_load(a[0]), 255)
            rows.append([*map(_load, b), gap, *map(_load, a)])
            labels.append(prompt)
            captions.append(["before"] * len(b) + [""] + ["after"] * len(a))
        b = _class_samples(before_dir, subject)[:per_row]
        a = _class_samples(after_dir, subject)[:per_row]
        if a and b:
            gap = np.full_like(_load(a[0]), 255)
            rows.append([*map(_load, b), gap, *map(_load, a)])
            labels.append(f"bare class prompt (drift): {s_after.get('class_prompt', '')}")
            captions.append(["before"] * len(b) + [""] + ["after"] * len(a))
    if not rows:
        raise ValueError(f"{before_dir} and {after_dir} share no subject with samples to show")
    return labelled_grid(rows, labels, captions, scale=2, label_width=190)


def compare(before: str, after: str, out: str | None = None, per_row: int = 4, picture: bool = True) -> dict:
    """Compare two `varlit eval` folders (BEFORE, e.g. the base model; AFTER, the tuned adapter).

    Args:
        before: the --out folder of the first evaluation (e.g. `--eval.adapters base`).
        after: the --out folder of the second.
        out: where compare.md, compare.json and compare.png go (default: AFTER).
        per_row: samples of each side shown per prompt in the picture.
        picture: write compare.png.
    """
    b_data, a_data = read_eval(before), read_eval(after)
    subjects = [s for s in a_data["subjects"] if s in b_data["subjects"]]
    if not subjects:
        raise ValueError(
            f"{before} ({', '.join(b_data['subjects'])}) and {after} ({', '.join(a_data['subjects'])}) "
            "evaluate different subjects"
        )
    rows = comparison_rows(b_data, a_data)
    out_dir = Path(out) if out else Path(after)
    samples = (sample_set(b_data, subjects), sample_set(a_data, subjects))
    md = comparison_markdown(rows, before, after, subjects, samples)
    atomic_write_text(out_dir / "compare.md", md)
    atomic_write_json(
        out_dir / "compare.json", {"before": before, "after": after, "subjects": subjects, "rows": rows}
    )
    print(md, end="")
    if picture:
        from varlit.world.figures import save_grid

        path = save_grid(
            out_dir / "compare.png", side_by_side(Path(before), Path(after), b_data, a_data, per_row)
        )
        print(f"picture: {path}")
    return {"rows": rows, "subjects": subjects}
