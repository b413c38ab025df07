"""Fixed pools of world scenes: rendered once (in parallel), cached on disk, reused by every run.

A pool holds pixels and the ground truth of each scene; captions are drawn from the spec each time a
scene is used (`caption_for`), so a scene is seen under several phrasings across epochs.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import atomic_write
from .scenes import (
    CLASSES,
    COLOUR_NAMES,
    CONTEXT_NAMES,
    SceneSpec,
    random_caption,
    random_spec,
    render,
    scene_rng,
)
from .subjects import SUBJECT_NAMES, random_subject_render

POOL_VERSION = 2  # 2: world v2 (larger objects)
NO_SUBJECT = -1


@dataclass
class ScenePool:
    """uint8 pixels [N, 64, 64, 3] and integer labels per scene (subject -1 for ordinary scenes)."""

    pixels: np.ndarray
    cls: np.ndarray
    colour: np.ndarray
    context: np.ndarray
    subject: np.ndarray

    def __len__(self) -> int:
        return len(self.pixels)

    def spec(self, i: int) -> SceneSpec:
        sub = int(self.subject[i])
        return SceneSpec(
            CLASSES[self.cls[i]],
            COLOUR_NAMES[self.colour[i]],
            CONTEXT_NAMES[self.context[i]],
            subject=SUBJECT_NAMES[sub] if sub >= 0 else None,
        )


def _render_one(args: tuple[int, int, float]) -> tuple[np.ndarray, int, int, int, int]:
    seed, index, subject_share = args
    rng = scene_rng(seed, index)
    if subject_share > 0 and rng.random() < subject_share:
        sub = int(rng.integers(len(SUBJECT_NAMES)))
        spec, pixels = random_subject_render(SUBJECT_NAMES[sub], rng)
    else:
        sub, spec = NO_SUBJECT, random_spec(rng)
        pixels = render(spec, rng)
    return (
        pixels,
        CLASSES.index(spec.cls),
        COLOUR_NAMES.index(spec.colour),
        CONTEXT_NAMES.index(spec.context),
        sub,
    )


def render_pool(num: int, seed: int, subject_share: float = 0.0, workers: int | None = None) -> ScenePool:
    """Scenes `0..num-1` of stream `seed`. `subject_share` > 0 mixes in subject renders (judge data only)."""
    workers = workers or min(os.cpu_count() or 1, 4)
    jobs = [(seed, i, subject_share) for i in range(num)]
    if workers > 1 and num >= 64:
        with ProcessPoolExecutor(workers) as ex:
            rows = list(ex.map(_render_one, jobs, chunksize=64))
    else:
        rows = [_render_one(j) for j in jobs]
    pixels, cls, colour, context, subject = zip(*rows)
    as_int = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
    return ScenePool(np.stack(pixels), as_int(cls), as_int(colour), as_int(context), as_int(subject))


def cached_pool(cache_dir: str | Path, num: int, seed: int, subject_share: float = 0.0) -> ScenePool:
    """`render_pool`, cached as one .npz per (version, num, seed, subject share)."""
    path = Path(cache_dir) / f"world-pool-v{POOL_VERSION}-n{num}-s{seed}-sub{subject_share:g}.npz"
    if path.exists():
        try:
            with np.load(path) as f:
                return ScenePool(*(f[k] for k in ("pixels", "cls", "colour", "context", "subject")))
        except (OSError, ValueError, KeyError):
            path.unlink()  # a damaged cache entry is rebuilt
    pool = render_pool(num, seed, subject_share)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **vars(pool))

    atomic_write(path, write)
    return pool


def caption_for(pool: ScenePool, i: int, rng: np.random.Generator) -> str:
    return random_caption(pool.spec(i), rng)
