"""The world: a seeded, procedural generator of captioned 64x64 RGB scenes.

A scene is one object of a class (ball, box, ...) in a colour, at a size and position, in a context
(on the beach, in the snow, ...). Every context is drawn with its own structure (horizon, texture,
props), so it is recognisable by more than a flat colour. Scenes render at twice the output size and are
box-filtered down, which gives anti-aliased edges that a small VAE can reproduce.

This module holds what a scene is (specs, captions, sampling) and renders it; how things look is in
`drawing.py`, the words in `vocabulary.py`. Subjects (`subject_designs.py`, photos in `subjects.py`) reuse
the same drawing code with details that ordinary scenes never have.
Everything is a pure function of (spec, seed): the same call gives the same pixels on every machine.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import asdict, dataclass

import numpy as np

from .drawing import (
    CANVAS,
    CONTEXT_DRAWERS,
    IMAGE_SIZE,
    OBJECT_DRAWERS,
    SUPERSAMPLE,
    Parts,
    draw_parts,
    rgb,
    shade,
)
from .subject_designs import subject_parts
from .vocabulary import CLASSES, COLOUR_NAMES, COLOURS, CONTEXT_NAMES, CONTEXTS

# Caption templates, DreamBench-like; a caption may leave the colour or the context unsaid.
FULL_TEMPLATES = ("a photo of a {colour} {cls} {context}", "a {colour} {cls} {context}")
PARTIAL_TEMPLATES = (
    "a photo of a {cls} {context}",
    "a {cls} {context}",
    "a photo of a {colour} {cls}",
    "a {colour} {cls}",
    "a photo of a {cls}",
)
FULL_CAPTION_SHARE = 0.6

HELD_OUT_SHARE = 0.06  # of all (class, colour, context) triples, never rendered in pretraining


@dataclass(frozen=True)
class SceneSpec:
    """What one scene shows. Sizes and positions are fractions of the image side."""

    cls: str
    colour: str
    context: str
    size: float = 0.2  # object half-extent
    cx: float = 0.5
    cy: float = 0.6
    subject: str | None = None  # a subject's name: drawn with its own details (subject_designs.py)

    def to_dict(self) -> dict:
        return asdict(self)


def stable_hash(*parts: object) -> int:
    """A 32-bit hash that is the same on every machine and Python run (unlike `hash`)."""
    return zlib.crc32("/".join(map(str, parts)).encode())


@functools.cache
def held_out_triples() -> frozenset[tuple[str, str, str]]:
    """The (class, colour, context) triples pretraining never renders; evaluation tests composition on them.

    Chosen by a fixed hash so that every class, colour and context keeps most of its combinations.
    """
    triples = [(c, k, x) for c in CLASSES for k in COLOUR_NAMES for x in CONTEXT_NAMES]
    ranked = sorted(triples, key=lambda t: stable_hash("held-out", *t))
    return frozenset(ranked[: round(HELD_OUT_SHARE * len(triples))])


def caption(spec: SceneSpec, template: str) -> str:
    return template.format(colour=spec.colour, cls=spec.cls, context=CONTEXTS[spec.context])


def full_caption(spec: SceneSpec) -> str:
    return caption(spec, FULL_TEMPLATES[0])


# ----------------------------------------------------------------------------------------------------
# Sampling scene specs


def random_placement(rng: np.random.Generator) -> tuple[float, float, float]:
    """(size, cx, cy): objects sit in the lower-middle of the frame, at varied sizes.

    World v2 draws them larger (half-extent 0.17-0.28 of the frame, was 0.13-0.24): an object then spans
    3 to 5 of the 8x8 latent cells, so its shape (a cup's handle, a house's roof) survives the tokenizer.
    """
    size = float(rng.uniform(0.17, 0.28))
    cx = float(rng.uniform(0.32, 0.68))
    cy = float(rng.uniform(0.42, 0.62))
    return size, cx, cy


def random_spec(rng: np.random.Generator, allow_held_out: bool = False) -> SceneSpec:
    held_out = held_out_triples()
    while True:
        cls = CLASSES[rng.integers(len(CLASSES))]
        colour = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
        context = CONTEXT_NAMES[rng.integers(len(CONTEXT_NAMES))]
        if allow_held_out or (cls, colour, context) not in held_out:
            break
    size, cx, cy = random_placement(rng)
    return SceneSpec(cls, colour, context, size, cx, cy)


def random_caption(spec: SceneSpec, rng: np.random.Generator) -> str:
    templates = FULL_TEMPLATES if rng.random() < FULL_CAPTION_SHARE else PARTIAL_TEMPLATES
    return caption(spec, templates[rng.integers(len(templates))])


def scene_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index)])


def pretraining_sample(seed: int, index: int) -> tuple[SceneSpec, str, np.ndarray]:
    """Scene `index` of the pretraining stream of `seed`: spec, caption and uint8 pixels [64, 64, 3]."""
    rng = scene_rng(seed, index)
    spec = random_spec(rng)
    text = random_caption(spec, rng)
    return spec, text, render(spec, rng)


def all_captions() -> list[str]:
    """Every caption the pretraining stream can produce (the world tokenizer is trained on these)."""
    out = set()
    for cls in CLASSES:
        for colour in COLOUR_NAMES:
            for context in CONTEXT_NAMES:
                spec = SceneSpec(cls, colour, context)
                out.update(caption(spec, t) for t in FULL_TEMPLATES + PARTIAL_TEMPLATES)
    return sorted(out)


# ----------------------------------------------------------------------------------------------------
# Rendering a spec (the drawing itself is in drawing.py, subjects' details in subject_designs.py)


def object_parts(spec: SceneSpec) -> Parts:
    cx, cy, s = spec.cx * CANVAS, spec.cy * CANVAS, spec.size * CANVAS
    if spec.subject is not None:
        return subject_parts(spec.subject, cx, cy, s)
    return OBJECT_DRAWERS[spec.cls](cx, cy, s, rgb(COLOURS[spec.colour]))


def outline_for(spec: SceneSpec) -> np.ndarray:
    base = rgb(COLOURS.get(spec.colour, (128, 128, 128)))
    return shade(base, 0.35) if spec.colour != "white" else rgb((90, 90, 100))


def render(spec: SceneSpec, rng: np.random.Generator) -> np.ndarray:
    """uint8 pixels [IMAGE_SIZE, IMAGE_SIZE, 3] of a scene; `rng` draws the context's details."""
    if spec.cls not in OBJECT_DRAWERS:
        raise ValueError(f"unknown world class {spec.cls!r}; choose one of {', '.join(CLASSES)}")
    if spec.context not in CONTEXT_DRAWERS:
        raise ValueError(f"unknown world context {spec.context!r}; choose one of {', '.join(CONTEXT_NAMES)}")
    canvas = np.zeros((CANVAS, CANVAS, 3), dtype=np.float32)
    CONTEXT_DRAWERS[spec.context](canvas, rng)
    draw_parts(canvas, object_parts(spec), outline_for(spec))
    small = canvas.reshape(IMAGE_SIZE, SUPERSAMPLE, IMAGE_SIZE, SUPERSAMPLE, 3).mean((1, 3))
    return (small.clip(0, 1) * 255 + 0.5).astype(np.uint8)


def render_spec(spec: SceneSpec, seed: int = 0) -> np.ndarray:
    """Render with the context details drawn from a seed derived from the spec (reproducible by spec)."""
    return render(spec, np.random.default_rng([stable_hash(*spec.to_dict().values()), int(seed)]))
