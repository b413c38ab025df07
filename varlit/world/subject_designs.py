"""What each world subject is and how it is drawn: eight one-of-a-kind objects, each of a world class.

Each subject adds a detail no pretraining scene has (dots, an emblem, a face...) on top of, or instead of,
its class's shape. This sits below `scenes` (which draws a spec naming a subject with `subject_parts`) and
below `subjects` (the subject's photos, prompts and folders, which render scenes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .drawing import (
    _XX,
    _YY,
    Parts,
    dilate,
    disc,
    ellipse,
    object_box,
    object_cup,
    object_fish,
    polygon,
    rect,
    rgb,
    shade,
    star_points,
)
from .vocabulary import CONTEXT_NAMES


@dataclass(frozen=True)
class WorldSubject:
    name: str
    cls: str
    colour: str  # the dominant colour (what a colour classifier may call it)
    description: str
    photo_contexts: tuple[str, ...]  # contexts its photos show; the rest are unseen

    @property
    def unseen_contexts(self) -> tuple[str, ...]:
        return tuple(c for c in CONTEXT_NAMES if c not in self.photo_contexts)


SUBJECTS: dict[str, WorldSubject] = {
    s.name: s
    for s in (
        WorldSubject(
            "polka_ball", "ball", "yellow", "a yellow ball with blue polka dots", ("grass", "beach", "carpet")
        ),
        WorldSubject(
            "emblem_box",
            "box",
            "blue",
            "a blue box with a big yellow star on its front",
            ("snow", "grass", "desert"),
        ),
        WorldSubject(
            "twotone_cup", "cup", "red", "a cup, red above and white below", ("night", "beach", "jungle")
        ),
        WorldSubject(
            "smiley_star", "star", "pink", "a pink star with a face", ("underwater", "snow", "grass")
        ),
        WorldSubject(
            "candy_ring",
            "ring",
            "red",
            "a ring of alternating red and white segments",
            ("desert", "night", "carpet"),
        ),
        WorldSubject(
            "tiered_tree",
            "tree",
            "green",
            "a tree of three stacked tiers with a yellow star on top",
            ("beach", "snow", "jungle"),
        ),
        WorldSubject(
            "dome_house",
            "house",
            "purple",
            "a purple house with a dome roof and a round window",
            ("grass", "underwater", "desert"),
        ),
        WorldSubject(
            "banded_fish",
            "fish",
            "orange",
            "an orange fish with white bands",
            ("underwater", "carpet", "night"),
        ),
    )
}

SUBJECT_NAMES: tuple[str, ...] = tuple(SUBJECTS)


def get_subject(name: str) -> WorldSubject:
    if name not in SUBJECTS:
        raise ValueError(f"unknown world subject {name!r}; choose one of {', '.join(SUBJECT_NAMES)}")
    return SUBJECTS[name]


# ----------------------------------------------------------------------------------------------------
# Drawing: each subject adds its detail on top of (or instead of) its class's shape


def _polka_ball(cx, cy, s) -> Parts:
    yellow, blue = rgb((245, 215, 35)), rgb((35, 70, 200))
    body = disc(cx, cy, s)
    dots = np.zeros_like(body)
    step = 0.62 * s
    for i in range(-2, 3):
        for j in range(-2, 3):
            x = cx + (j + 0.5 * (i % 2)) * step
            y = cy + i * step * 0.87
            dots |= disc(x, y, 0.19 * s)
    return [(body, yellow), (dots & body, blue)]


def _emblem_box(cx, cy, s) -> Parts:
    parts = object_box(cx, cy, s, rgb((35, 80, 215)))
    fx, fy = cx - 0.1 * s, cy + 0.2 * s
    parts.append((polygon(star_points(fx, fy, 0.62 * s, 0.27 * s)), rgb((250, 220, 40))))
    return parts


def _twotone_cup(cx, cy, s) -> Parts:
    red, white = rgb((215, 35, 35)), rgb((245, 245, 245))
    parts = object_cup(cx, cy, s, red)
    handle, body, rim = parts
    lower = body[0] & (_YY >= cy + 0.05 * s)
    return [handle, body, (lower, white), rim]


def _smiley_star(cx, cy, s) -> Parts:
    pink = rgb((250, 135, 195))
    body = polygon(star_points(cx, cy + 0.1 * s, 1.1 * s, 0.48 * s))
    eyes = disc(cx - 0.18 * s, cy - 0.02 * s, 0.1 * s) | disc(cx + 0.18 * s, cy - 0.02 * s, 0.1 * s)
    d = np.sqrt((_XX - cx) ** 2 + (_YY - (cy + 0.12 * s)) ** 2)
    mouth = (np.abs(d - 0.24 * s) < 0.06 * s) & (_YY > cy + 0.2 * s)
    dark = rgb((40, 20, 30))
    return [(body, pink), (eyes, dark), (mouth, dark)]


def _candy_ring(cx, cy, s) -> Parts:
    d = np.sqrt((_XX - cx) ** 2 + (_YY - cy) ** 2)
    band = (d <= s) & (d >= 0.55 * s)
    angle = np.arctan2(_YY - cy, _XX - cx)
    white_seg = (np.floor((angle + np.pi) / (np.pi / 4)) % 2) == 1
    return [(band, rgb((215, 35, 35))), (band & white_seg, rgb((245, 245, 245)))]


def _tiered_tree(cx, cy, s) -> Parts:
    green = rgb((45, 165, 55))
    trunk = rect(cx - 0.16 * s, cy + 0.5 * s, cx + 0.16 * s, cy + 1.05 * s)
    tiers = []
    for k, (top, width) in enumerate(((-1.0, 0.45), (-0.45, 0.65), (0.05, 0.85))):
        y0 = cy + top * s
        tri = polygon([(cx, y0), (cx + width * s, y0 + 0.6 * s), (cx - width * s, y0 + 0.6 * s)])
        tiers.append((tri, shade(green, 1.0 - 0.12 * k)))
    star = polygon(star_points(cx, cy - 1.05 * s, 0.3 * s, 0.13 * s))
    return [(trunk, rgb((110, 70, 35))), *tiers, (star, rgb((250, 220, 40)))]


def _dome_house(cx, cy, s) -> Parts:
    purple = rgb((135, 55, 185))
    body = rect(cx - 0.7 * s, cy - 0.2 * s, cx + 0.7 * s, cy + 0.95 * s)
    dome = ellipse(cx, cy - 0.2 * s, 0.8 * s, 0.75 * s) & (_YY < cy - 0.2 * s)
    window = disc(cx, cy + 0.2 * s, 0.22 * s)
    door = rect(cx - 0.16 * s, cy + 0.55 * s, cx + 0.16 * s, cy + 0.95 * s)
    return [
        (body, purple),
        (dome, shade(purple, 0.6)),
        (window, rgb((250, 220, 40))),
        (door, rgb((70, 45, 30))),
    ]


def _banded_fish(cx, cy, s) -> Parts:
    parts = object_fish(cx, cy, s, rgb((245, 135, 20)))
    tail, body, eye = parts
    bands = np.zeros_like(body[0])
    for x in (cx - 0.25 * s, cx + 0.35 * s):
        bands |= np.abs(_XX - x) < 0.13 * s
    band_mask = bands & body[0]
    edges = dilate(band_mask, 1) & ~band_mask & body[0]
    return [tail, body, (edges, rgb((25, 25, 25))), (band_mask, rgb((250, 250, 250))), eye]


_DRAWERS = {
    "polka_ball": _polka_ball,
    "emblem_box": _emblem_box,
    "twotone_cup": _twotone_cup,
    "smiley_star": _smiley_star,
    "candy_ring": _candy_ring,
    "tiered_tree": _tiered_tree,
    "dome_house": _dome_house,
    "banded_fish": _banded_fish,
}


def subject_parts(name: str, cx: float, cy: float, s: float) -> Parts:
    return _DRAWERS[get_subject(name).name](cx, cy, s)
