"""What `varlit eval` leaves in its output folder besides the images: metrics.json / .csv / .md and grids.

Every file is written atomically (temp file + os.replace), so a killed run never leaves a torn report.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..captions import captioned_tiles
from ..io import atomic_write_json, atomic_write_text, save_png

if TYPE_CHECKING:
    from .config import EvalConfig
    from .plan import SubjectPlan
    from .store import ImageStore

GRID_TILE = 256  # side of one grid cell: 1024 px samples would make a 25 x 8 grid of 200 megapixels
GRID_GAP = 2
CSV_COLUMNS = (
    "subject",
    "class_word",
    "prompt",
    "template",
    "clip_t_text",
    "n",
    "dino",
    "clip_i",
    "clip_t",
    "div",
    "pres",
    "adapter",
    "dino_backbone",
    "clip_backbone",
)
_HEAD = {"dino": "DINO", "clip_i": "CLIP-I", "clip_t": "CLIP-T", "pres": "PRES", "div": "DIV"}
# The world judge's metrics (`judge`): columns appear only when eval.judge is set.
JUDGE_PROMPT_COLUMNS = (
    "judge_subject_sim",
    "judge_subject_rate",
    "judge_context_prob",
    "judge_context_acc",
    "judge_class_prob",
    "judge_class_acc",
)
JUDGE_SUBJECT_COLUMNS = ("judge_leakage", "judge_leakage_sim", "judge_class_prior_acc")
_JUDGE_HEAD = {
    "judge_subject_sim": "subj. sim",
    "judge_subject_rate": "subj. rate",
    "judge_context_prob": "ctx prob",
    "judge_context_acc": "ctx acc",
    "judge_class_prob": "cls prob",
    "judge_class_acc": "cls acc",
    "judge_leakage": "leakage",
    "judge_leakage_sim": "leak. sim",
    "judge_class_prior_acc": "prior acc",
}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _code(text: str) -> str:
    """Markdown inline code (keeps `<placeholder>` visible), with pipes escaped for tables."""
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`"


def _backbone_label(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return ""
    return f"{entry['id']} (random)" if entry.get("random_init") else entry["id"]


def _judged(doc: dict[str, Any]) -> bool:
    return bool(doc["backbones"].get("judge"))


def _num(value: float | None) -> str:
    return "" if value is None else repr(value)


def metrics_csv(doc: dict[str, Any]) -> str:
    """One row per subject x prompt; PRES (a per-subject number) repeats on the subject's rows, and so do the
    judge's drift metrics (columns after the DreamBench ones, only when the judge ran)."""
    buf = io.StringIO()
    judged = _judged(doc)
    columns = CSV_COLUMNS + ((*JUDGE_PROMPT_COLUMNS, *JUDGE_SUBJECT_COLUMNS) if judged else ())
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    dino, clip = (_backbone_label(doc["backbones"][k]) for k in ("dino", "clip"))
    for name, subject in doc["subjects"].items():
        for prompt, row in subject["prompts"].items():
            writer.writerow(
                {
                    "subject": name,
                    "class_word": subject["class_word"],
                    "prompt": prompt,
                    "template": row["template"],
                    "clip_t_text": row["clip_t_text"],
                    "n": row["n"],
                    **{
                        k: "" if row[k] is None else repr(row[k]) for k in ("dino", "clip_i", "clip_t", "div")
                    },
                    "pres": "" if subject["pres"] is None else repr(subject["pres"]),
                    "adapter": subject["adapter"] or "base",
                    "dino_backbone": dino,
                    "clip_backbone": clip,
                    **({k: _num(row[k]) for k in JUDGE_PROMPT_COLUMNS} if judged else {}),
                    **({k: _num(subject["overall"][k]) for k in JUDGE_SUBJECT_COLUMNS} if judged else {}),
                }
            )
    return buf.getvalue()


def metrics_markdown(doc: dict[str, Any]) -> str:
    """An overall table (one row per subject, then the mean) and a per-prompt table per subject."""
    lines = [f"# varlit eval: {doc['num_subjects']} subject(s)", ""]
    for note in doc["notes"]:
        lines.append(f"> **Note:** {note}")
    if doc["notes"]:
        lines.append("")
    backbones = ", ".join(
        _backbone_label(doc["backbones"].get(k)) for k in ("dino", "clip", "judge") if doc["backbones"].get(k)
    )
    settings = doc["settings"]
    lines += [
        f"Backbones: {backbones}. Seeds: {settings['seeds']}. CLIP-T text: `{settings['clip_t_text']}`. "
        f"Model: {doc['model']['preset']}.",
        "",
        "## Overall",
        "",
        "| subject | " + " | ".join(_HEAD.values()) + " |",
        "|---|" + "---:|" * len(_HEAD),
    ]
    for name, subject in doc["subjects"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(subject["overall"][k]) for k in _HEAD) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{_fmt(doc['overall'][k])}**" for k in _HEAD) + " |")
    per_prompt = ("dino", "clip_i", "clip_t", "div")
    for name, subject in doc["subjects"].items():
        kind = "live" if subject["live"] else "object"
        adapter = _code(subject["adapter"]) if subject["adapter"] else "none (base model)"
        lines += [
            "",
            f"## {name}",
            "",
            f"Class {_code(subject['class_word'])} ({kind}), adapter {adapter}, "
            f"{subject['num_reference']} reference photo(s). PRES: {_fmt(subject['pres'])} "
            f"({subject['num_class_samples']} samples of {_code(subject['class_prompt'])}).",
        ]
        if subject["div_skipped"]:
            lines.append(f"{subject['div_skipped']}.")
        lines += [
            "",
            "| prompt | n | " + " | ".join(_HEAD[k] for k in per_prompt) + " |",
            "|---|---:|" + "---:|" * len(per_prompt),
        ]
        total = 0
        for prompt, row in subject["prompts"].items():
            total += row["n"]
            lines.append(
                f"| {_code(prompt)} | {row['n']} | " + " | ".join(_fmt(row[k]) for k in per_prompt) + " |"
            )
        lines.append(
            f"| **mean** | {total} | "
            + " | ".join(f"**{_fmt(subject['overall'][k])}**" for k in per_prompt)
            + " |"
        )
    if _judged(doc):
        lines += judge_markdown(doc)
    return "\n".join(lines) + "\n"


def judge_markdown(doc: dict[str, Any]) -> list[str]:
    """The world judge's metrics: per subject (overall), then per prompt."""
    judge = doc["backbones"]["judge"]
    names = (*JUDGE_PROMPT_COLUMNS, *JUDGE_SUBJECT_COLUMNS)
    lines = [
        "",
        f"## World judge ({_code(judge['id'])})",
        "",
        "Subject fidelity: subj. sim (judge-embedding cosine with the photos), subj. rate (samples the judge "
        "calls the subject). Prompt fidelity: probability / accuracy of the prompt's context and class. "
        "Drift, on bare class-prompt samples: leakage (called the subject), leak. sim (cosine with the photos), "
        "prior acc (read as the class).",
        "",
        "| subject | " + " | ".join(_JUDGE_HEAD[k] for k in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for name, subject in doc["subjects"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(subject["overall"][k]) for k in names) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{_fmt(doc['overall'][k])}**" for k in names) + " |")
    for name, subject in doc["subjects"].items():
        lines += [
            "",
            f"### {name}: judge per prompt (judged as subject {_code(str(subject.get('judge_subject')))})",
            "",
            "| prompt | n | " + " | ".join(_JUDGE_HEAD[k] for k in JUDGE_PROMPT_COLUMNS) + " |",
            "|---|---:|" + "---:|" * len(JUDGE_PROMPT_COLUMNS),
        ]
        for prompt, row in subject["prompts"].items():
            cells = " | ".join(_fmt(row[k]) for k in JUDGE_PROMPT_COLUMNS)
            lines.append(f"| {_code(prompt)} | {row['n']} | {cells} |")
    return lines


def _tile(path: Path, side: int) -> np.ndarray:
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    if rgb.size != (side, side):
        rgb = rgb.resize((side, side), resample=Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


def image_grid(
    rows: list[list[Path]], side: int = GRID_TILE, captions: list[list[str]] | None = None
) -> np.ndarray:
    """uint8 [H, W, 3]: one row per list, white gaps; every tile resized to side x side, with its
    caption (prompt and seed) below it when `captions` (same shape as `rows`) is given."""
    ncols = max(len(r) for r in rows)
    tiles = [[_tile(path, side) for path in row] for row in rows]
    if captions is not None:
        flat = captioned_tiles([t for row in tiles for t in row], [c for row in captions for c in row])
        it = iter(flat)
        tiles = [[next(it) for _ in row] for row in tiles]
    tile_h = tiles[0][0].shape[0]
    height = len(rows) * (tile_h + GRID_GAP) - GRID_GAP
    width = ncols * (side + GRID_GAP) - GRID_GAP
    grid = np.full((height, width, 3), 255, dtype=np.uint8)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            y, x = r * (tile_h + GRID_GAP), c * (side + GRID_GAP)
            grid[y : y + tile_h, x : x + side] = tile
    return grid


def write_grids(plans: list[SubjectPlan], cfg: EvalConfig, store: ImageStore) -> list[Path]:
    """grids/<subject>.png: rows = prompts, columns = seeds (tiles at most GRID_TILE px)."""
    written = []
    for plan in plans:
        rows = [[store.sample(plan.name, slug, seed) for seed in cfg.seeds] for slug in plan.slugs]
        captions = [[f"{slug} | seed {seed}" for seed in cfg.seeds] for slug in plan.slugs]
        with Image.open(rows[0][0]) as first:
            side = min(GRID_TILE, *first.size)
        grid = image_grid(rows, side, captions)
        written.append(save_png(store.out / "grids" / f"{plan.name}.png", grid))
    return written


def write_reports(doc: dict[str, Any], plans: list[SubjectPlan], cfg: EvalConfig, store: ImageStore) -> dict:
    out = store.out
    files = {
        "json": atomic_write_json(out / "metrics.json", doc),
        "csv": atomic_write_text(out / "metrics.csv", metrics_csv(doc)),
        "md": atomic_write_text(out / "metrics.md", metrics_markdown(doc)),
    }
    files["grids"] = out / "grids"
    write_grids(plans, cfg, store)
    return files
