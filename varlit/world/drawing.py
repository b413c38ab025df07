"""Drawing the world on a float canvas [CANVAS, CANVAS, 3] in 0..1: primitives, contexts and objects.

Scenes render at SUPERSAMPLE times the output size and are box-filtered down (`scenes.render`), which gives
anti-aliased edges a small VAE can reproduce. Contexts paint a whole background with its own structure
(horizon, texture, props); objects return the parts they paint as (mask, colour) in drawing order, so a
subject (`subject_designs`) can add its detail on top of its class's shape. Pure functions of their
arguments and the `rng` they are given: the same call gives the same pixels on every machine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

IMAGE_SIZE = 64
SUPERSAMPLE = 2
CANVAS = IMAGE_SIZE * SUPERSAMPLE


_YY, _XX = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32) + 0.5


def rgb(c: Sequence[float]) -> np.ndarray:
    return np.asarray(c, dtype=np.float32) / 255.0


def shade(colour: np.ndarray, factor: float) -> np.ndarray:
    """Darker (factor < 1) or lighter (factor > 1, towards white) version of a colour."""
    if factor <= 1:
        return colour * factor
    return colour + (1 - colour) * (factor - 1)


def paint(canvas: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> None:
    canvas[mask] = colour


def disc(cx: float, cy: float, r: float) -> np.ndarray:
    return (_XX - cx) ** 2 + (_YY - cy) ** 2 <= r * r


def ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((_XX - cx) / rx) ** 2 + ((_YY - cy) / ry) ** 2 <= 1.0


def rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return (_XX >= x0) & (_XX < x1) & (_YY >= y0) & (_YY < y1)


def polygon(points: Sequence[tuple[float, float]]) -> np.ndarray:
    """Even-odd fill of a closed polygon given as (x, y) vertices."""
    inside = np.zeros((CANVAS, CANVAS), dtype=bool)
    n = len(points)
    for i in range(n):
        (x0, y0), (x1, y1) = points[i], points[(i + 1) % n]
        if y0 == y1:
            continue
        crosses = (_YY >= min(y0, y1)) & (_YY < max(y0, y1))
        x_at = x0 + (_YY - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (_XX < x_at)
    return inside


def star_points(cx: float, cy: float, r_out: float, r_in: float, n: int = 5, rot: float = -np.pi / 2):
    pts = []
    for i in range(2 * n):
        r = r_out if i % 2 == 0 else r_in
        a = rot + i * np.pi / n
        pts.append((cx + r * np.cos(a), cy + r * np.sin(a)))
    return pts


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-px, px + 1):
        for dx in range(-px, px + 1):
            if dy * dy + dx * dx <= px * px and (dy or dx):
                out |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


def vertical_gradient(top: Sequence[float], bottom: Sequence[float]) -> np.ndarray:
    t = (np.arange(CANVAS, dtype=np.float32)[:, None, None] + 0.5) / CANVAS
    return np.broadcast_to(rgb(top) * (1 - t) + rgb(bottom) * t, (CANVAS, CANVAS, 3))


# ----------------------------------------------------------------------------------------------------
# Contexts: each a background with its own structure


def _speckle(canvas, rng, mask, colour, count, radius):
    """Small dots, drawn in their own window only (a full-canvas mask per dot is slow)."""
    r = int(np.ceil(radius))
    for _ in range(count):
        x, y = rng.uniform(0, CANVAS, 2)
        x0, x1 = max(int(x) - r, 0), min(int(x) + r + 1, CANVAS)
        y0, y1 = max(int(y) - r, 0), min(int(y) + r + 1, CANVAS)
        win = ((_XX[y0:y1, x0:x1] - x) ** 2 + (_YY[y0:y1, x0:x1] - y) ** 2 <= radius * radius) & mask[
            y0:y1, x0:x1
        ]
        canvas[y0:y1, x0:x1][win] = colour


def draw_beach(canvas, rng):
    canvas[:] = vertical_gradient((120, 185, 240), (190, 225, 250))
    horizon = CANVAS * rng.uniform(0.36, 0.42)
    shore = horizon + CANVAS * rng.uniform(0.1, 0.14)
    sea = (_YY >= horizon) & (_YY < shore)
    canvas[sea] = rgb((30, 120, 185))
    for k in range(3):  # white wave crests
        y = horizon + (k + 0.6) * (shore - horizon) / 3.5
        wave = np.abs(_YY - (y + 2 * np.sin(_XX / 7 + rng.uniform(0, 6)))) < 1.2
        canvas[wave & sea] = rgb((235, 245, 250))
    sand = _YY >= shore
    canvas[sand] = rgb((235, 210, 150))
    _speckle(canvas, rng, sand, rgb((200, 170, 110)), 40, 1.0)
    sx, sy = rng.uniform(0.7, 0.9) * CANVAS, rng.uniform(0.08, 0.18) * CANVAS
    canvas[disc(sx, sy, 9)] = rgb((255, 230, 90))


def draw_snow(canvas, rng):
    canvas[:] = vertical_gradient((175, 190, 210), (215, 225, 235))
    horizon = CANVAS * rng.uniform(0.5, 0.58)
    # a grey mountain ridge with a snow cap behind the field
    peak_x = rng.uniform(0.2, 0.8) * CANVAS
    ridge = polygon([(peak_x - 70, horizon), (peak_x, horizon - 40), (peak_x + 70, horizon)])
    canvas[ridge] = rgb((130, 140, 160))
    cap = polygon([(peak_x - 18, horizon - 30), (peak_x, horizon - 40), (peak_x + 18, horizon - 30)])
    canvas[cap] = rgb((250, 250, 252))
    ground = _YY >= horizon
    canvas[ground] = vertical_gradient((240, 244, 250), (210, 222, 240))[ground]
    _speckle(canvas, rng, np.ones_like(ground), rgb((255, 255, 255)), 45, 1.4)


def draw_grass(canvas, rng):
    canvas[:] = vertical_gradient((95, 165, 235), (170, 210, 245))
    horizon = CANVAS * rng.uniform(0.48, 0.56)
    ground = _YY >= horizon
    canvas[ground] = vertical_gradient((110, 185, 70), (60, 140, 40))[ground]
    blade_colour = rgb((35, 105, 30))
    for _ in range(70):  # blades: 2 px wide, 5 px tall strokes
        x, y = rng.uniform(0, CANVAS), rng.uniform(horizon + 2, CANVAS)
        x0, y0 = int(np.floor(x - 0.3)), int(np.floor(y - 4.5))
        canvas[max(y0, 0) : int(y) + 1, max(x0, 0) : x0 + 2] = blade_colour
    for _ in range(4):  # clouds
        x, y = rng.uniform(0, CANVAS), rng.uniform(8, horizon - 15)
        canvas[ellipse(x, y, 11, 4.5)] = rgb((250, 250, 250))


def draw_night(canvas, rng):
    canvas[:] = vertical_gradient((8, 12, 45), (30, 35, 85))
    sky = _YY < CANVAS * 0.6
    _speckle(canvas, rng, sky, rgb((255, 250, 200)), 35, 1.1)
    mx, my = rng.uniform(0.12, 0.35) * CANVAS, rng.uniform(0.1, 0.22) * CANVAS
    moon = disc(mx, my, 10) & ~disc(mx + 5, my - 3, 9)
    canvas[moon] = rgb((250, 240, 170))
    horizon = CANVAS * rng.uniform(0.62, 0.7)
    hills = _YY >= horizon + 5 * np.sin(_XX / 13 + rng.uniform(0, 6))
    canvas[hills] = rgb((15, 25, 30))


def draw_desert(canvas, rng):
    canvas[:] = vertical_gradient((250, 200, 120), (250, 230, 170))
    base = CANVAS * rng.uniform(0.45, 0.52)
    far = _YY >= base + 6 * np.sin(_XX / 17 + rng.uniform(0, 6))
    canvas[far] = rgb((215, 160, 80))
    near = _YY >= base + 22 + 8 * np.sin(_XX / 23 + rng.uniform(0, 6))
    canvas[near] = rgb((235, 185, 105))
    cx = rng.choice([rng.uniform(0.06, 0.18), rng.uniform(0.82, 0.94)]) * CANVAS
    top = base - 12
    cactus = rect(cx - 3, top, cx + 3, base + 14) | rect(cx - 10, top + 10, cx - 3, top + 13)
    cactus |= rect(cx - 10, top + 3, cx - 7, top + 13) | rect(cx + 3, top + 14, cx + 9, top + 17)
    cactus |= rect(cx + 6, top + 6, cx + 9, top + 17)
    canvas[cactus] = rgb((60, 130, 60))


def draw_underwater(canvas, rng):
    canvas[:] = vertical_gradient((40, 170, 190), (10, 45, 110))
    for k in range(4):  # light ripples near the surface
        y = 4 + k * 5 + 2 * np.sin(_XX / 6 + rng.uniform(0, 6))
        canvas[np.abs(_YY - y) < 0.7] = rgb((150, 230, 235))
    for _ in range(12):  # bubbles: rings
        x, y, r = rng.uniform(0, CANVAS), rng.uniform(0, CANVAS), rng.uniform(1.5, 4)
        d = np.sqrt((_XX - x) ** 2 + (_YY - y) ** 2)
        canvas[np.abs(d - r) < 0.8] = rgb((210, 245, 250))
    for _ in range(3):  # seaweed
        x = rng.uniform(0, CANVAS)
        weed = (np.abs(_XX - (x + 3 * np.sin(_YY / 6))) < 2) & (_YY > CANVAS * rng.uniform(0.55, 0.75))
        canvas[weed] = rgb((30, 120, 60))


def draw_carpet(canvas, rng):
    canvas[:] = vertical_gradient((25, 20, 30), (45, 35, 40))
    for _ in range(3):  # spotlights
        x = rng.uniform(0.1, 0.9) * CANVAS
        beam = polygon([(x - 3, 0), (x + 3, 0), (x + 22, CANVAS * 0.55), (x - 22, CANVAS * 0.55)])
        canvas[beam] = canvas[beam] * 0.6 + rgb((200, 180, 110)) * 0.4
    horizon = CANVAS * rng.uniform(0.4, 0.46)
    carpet = polygon(
        [(CANVAS * 0.4, horizon), (CANVAS * 0.6, horizon), (CANVAS * 0.98, CANVAS), (CANVAS * 0.02, CANVAS)]
    )
    canvas[carpet] = rgb((185, 20, 35))
    edge = dilate(carpet, 1) & ~carpet
    canvas[edge] = rgb((230, 190, 60))
    for x in (CANVAS * 0.1, CANVAS * 0.9):  # golden posts with a rope
        canvas[rect(x - 2, horizon + 20, x + 2, horizon + 50)] = rgb((225, 185, 55))
        canvas[disc(x, horizon + 20, 3.5)] = rgb((245, 210, 80))


def draw_jungle(canvas, rng):
    canvas[:] = vertical_gradient((20, 70, 35), (10, 45, 20))
    for _ in range(5):  # vines
        x = rng.uniform(0, CANVAS)
        canvas[(np.abs(_XX - x - 2 * np.sin(_YY / 9)) < 1.0) & (_YY < CANVAS * rng.uniform(0.4, 0.9))] = rgb(
            (70, 50, 25)
        )
    greens = [(40, 120, 45), (70, 160, 60), (25, 95, 40), (100, 175, 70)]
    for _ in range(16):  # big leaves
        x, y = rng.uniform(0, CANVAS), rng.uniform(0, CANVAS)
        rx, ry = rng.uniform(8, 15), rng.uniform(3, 6)
        a = rng.uniform(0, np.pi)
        xr = (_XX - x) * np.cos(a) + (_YY - y) * np.sin(a)
        yr = -(_XX - x) * np.sin(a) + (_YY - y) * np.cos(a)
        leaf = (xr / rx) ** 2 + (yr / ry) ** 2 <= 1
        canvas[leaf] = rgb(greens[rng.integers(len(greens))])
        canvas[leaf & (np.abs(yr) < 0.6)] = rgb((20, 70, 25))  # the midrib


CONTEXT_DRAWERS: dict[str, Callable[[np.ndarray, np.random.Generator], None]] = {
    "beach": draw_beach,
    "snow": draw_snow,
    "grass": draw_grass,
    "night": draw_night,
    "desert": draw_desert,
    "underwater": draw_underwater,
    "carpet": draw_carpet,
    "jungle": draw_jungle,
}


# ----------------------------------------------------------------------------------------------------
# Objects: each returns the parts it paints as (mask, colour) in drawing order


Parts = list[tuple[np.ndarray, np.ndarray]]


def object_ball(cx, cy, s, c) -> Parts:
    body = disc(cx, cy, s)
    return [(body, c), (disc(cx - 0.35 * s, cy - 0.35 * s, 0.25 * s) & body, shade(c, 1.45))]


def object_box(cx, cy, s, c) -> Parts:
    front = rect(cx - 0.8 * s, cy - 0.5 * s, cx + 0.6 * s, cy + 0.9 * s)
    top = polygon(
        [
            (cx - 0.8 * s, cy - 0.5 * s),
            (cx - 0.4 * s, cy - 0.9 * s),
            (cx + s, cy - 0.9 * s),
            (cx + 0.6 * s, cy - 0.5 * s),
        ]
    )
    side = polygon(
        [
            (cx + 0.6 * s, cy - 0.5 * s),
            (cx + s, cy - 0.9 * s),
            (cx + s, cy + 0.5 * s),
            (cx + 0.6 * s, cy + 0.9 * s),
        ]
    )
    return [(front, c), (top, shade(c, 1.35)), (side, shade(c, 0.7))]


def object_cup(cx, cy, s, c) -> Parts:
    body = polygon(
        [
            (cx - 0.75 * s, cy - 0.8 * s),
            (cx + 0.55 * s, cy - 0.8 * s),
            (cx + 0.4 * s, cy + 0.9 * s),
            (cx - 0.6 * s, cy + 0.9 * s),
        ]
    )
    d = np.sqrt((_XX - (cx + 0.6 * s)) ** 2 + (_YY - cy) ** 2)
    handle = (np.abs(d - 0.38 * s) < 0.12 * s) & (_XX > cx + 0.5 * s)
    rim = ellipse(cx - 0.1 * s, cy - 0.8 * s, 0.65 * s, 0.14 * s)
    return [(handle, c), (body, c), (rim, shade(c, 0.55))]


def object_star(cx, cy, s, c) -> Parts:
    return [(polygon(star_points(cx, cy + 0.1 * s, 1.1 * s, 0.48 * s)), c)]


def object_ring(cx, cy, s, c) -> Parts:
    d = np.sqrt((_XX - cx) ** 2 + (_YY - cy) ** 2)
    return [((d <= s) & (d >= 0.55 * s), c), ((d <= 0.85 * s) & (d >= 0.7 * s), shade(c, 1.3))]


def object_tree(cx, cy, s, c) -> Parts:
    trunk = rect(cx - 0.18 * s, cy + 0.3 * s, cx + 0.18 * s, cy + 1.05 * s)
    canopy = polygon([(cx, cy - 1.1 * s), (cx + 0.8 * s, cy + 0.4 * s), (cx - 0.8 * s, cy + 0.4 * s)])
    return [(trunk, rgb((110, 70, 35))), (canopy, c)]


def object_house(cx, cy, s, c) -> Parts:
    body = rect(cx - 0.7 * s, cy - 0.2 * s, cx + 0.7 * s, cy + 0.95 * s)
    roof = polygon([(cx - 0.95 * s, cy - 0.2 * s), (cx, cy - 1.0 * s), (cx + 0.95 * s, cy - 0.2 * s)])
    door = rect(cx - 0.18 * s, cy + 0.35 * s, cx + 0.18 * s, cy + 0.95 * s)
    return [(body, c), (roof, shade(c, 0.6)), (door, rgb((70, 45, 30)))]


def object_fish(cx, cy, s, c) -> Parts:
    body = ellipse(cx + 0.15 * s, cy, 0.85 * s, 0.5 * s)
    tail = polygon([(cx - 0.55 * s, cy), (cx - 1.1 * s, cy - 0.5 * s), (cx - 1.1 * s, cy + 0.5 * s)])
    eye = disc(cx + 0.6 * s, cy - 0.12 * s, 0.1 * s)
    return [(tail, shade(c, 0.8)), (body, c), (eye, rgb((20, 20, 20)))]


OBJECT_DRAWERS: dict[str, Callable[..., Parts]] = {
    "ball": object_ball,
    "box": object_box,
    "cup": object_cup,
    "star": object_star,
    "ring": object_ring,
    "tree": object_tree,
    "house": object_house,
    "fish": object_fish,
}


def draw_parts(canvas: np.ndarray, parts: Parts, outline_colour: np.ndarray) -> None:
    """Paint an object with a dark outline around its silhouette (so it separates from any context)."""
    silhouette = np.zeros((CANVAS, CANVAS), dtype=bool)
    for mask, _ in parts:
        silhouette |= mask
    canvas[dilate(silhouette, 2) & ~silhouette] = outline_colour
    for mask, colour in parts:
        canvas[mask] = colour
