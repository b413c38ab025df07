"""World subjects: eight one-of-a-kind objects, each of a world class, with a detail no pretraining scene has.

A subject's "photos" are renders in a few contexts, at different positions and sizes, laid out like a
DreamBench subject folder (`00.png` ... plus the class word), so the data module reads them as it reads
DreamBench. The contexts a subject's photos show are fixed; evaluation asks for the others.

What each subject is and how it is drawn lives in `subject_designs` (below `scenes`, which draws it); the
catalogue's names are re-exported here, where the rest of varlit looks for them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .scenes import CONTEXT_NAMES, CONTEXTS, SceneSpec, random_placement, render, stable_hash
from .subject_designs import SUBJECT_NAMES, get_subject
from .subject_designs import SUBJECTS as SUBJECTS  # re-exported: the catalogue is looked up here
from .subject_designs import WorldSubject as WorldSubject
from .subject_designs import subject_parts as subject_parts

NUM_PHOTOS = 5


# ----------------------------------------------------------------------------------------------------
# Photos, prompts and folders


def subject_spec(name: str, context: str, rng: np.random.Generator) -> SceneSpec:
    sub = get_subject(name)
    size, cx, cy = random_placement(rng)
    return SceneSpec(sub.cls, sub.colour, context, size, cx, cy, subject=sub.name)


def subject_photos(name: str, num_photos: int = NUM_PHOTOS) -> list[tuple[SceneSpec, np.ndarray]]:
    """The subject's fixed photo set: its photo contexts in turn, each at its own placement."""
    sub = get_subject(name)
    rng = np.random.default_rng([stable_hash("photos", name)])
    out = []
    for i in range(num_photos):
        spec = subject_spec(name, sub.photo_contexts[i % len(sub.photo_contexts)], rng)
        out.append((spec, render(spec, rng)))
    return out


def random_subject_render(name: str, rng: np.random.Generator) -> tuple[SceneSpec, np.ndarray]:
    """A fresh render of a subject in any context (the judge learns subjects from these)."""
    context = CONTEXT_NAMES[rng.integers(len(CONTEXT_NAMES))]
    spec = subject_spec(name, context, rng)
    return spec, render(spec, rng)


# DreamBench-like prompt lists ({} is "<placeholder> {class}" or the bare class word).
SUBJECT_PROMPTS: tuple[str, ...] = tuple(f"a photo of a {{}} {CONTEXTS[c]}" for c in CONTEXT_NAMES)


def subject_prompts(name: str, placeholder: str = "<placeholder>", unseen_only: bool = False) -> list[str]:
    sub = get_subject(name)
    contexts = sub.unseen_contexts if unseen_only else CONTEXT_NAMES
    return [f"a photo of {placeholder} {sub.cls} {CONTEXTS[c]}" for c in contexts]


CAPTIONS_FILE = "captions.txt"


def write_subject_folder(name: str, out: Path) -> Path:
    """`out/<name>/00.png ...` plus `class.txt`, `prompts.txt` and `captions.txt` (each photo's own instance
    prompt, naming its context, for `--data.photo_captions captions.txt`); atomic writes; returns the folder."""
    from ..io import atomic_write_text, save_png

    sub = get_subject(name)
    folder = Path(out) / sub.name
    captions = []
    for i, (spec, pixels) in enumerate(subject_photos(name)):
        save_png(folder / f"{i:02d}.png", pixels)
        captions.append(f"{i:02d}.png: a photo of a <placeholder> {{class}} {CONTEXTS[spec.context]}")
    atomic_write_text(folder / CAPTIONS_FILE, "\n".join(captions) + "\n")
    atomic_write_text(folder / "class.txt", sub.cls + "\n")
    atomic_write_text(folder / "prompts.txt", "\n".join(subject_prompts(name)) + "\n")
    return folder


def main_write_subjects(out: str = "runs/world/subjects") -> list[Path]:
    """Write every subject's folder under `out` (what `--data.subject_dir` reads)."""
    folders = [write_subject_folder(n, Path(out)) for n in SUBJECT_NAMES]
    print(f"wrote {len(folders)} subject folders under {out}")
    return folders
