"""Official Infinity scale schedules: the (h, w) token grid of every scale, per aspect ratio and pixel budget.

Infinity only knows the aspect ratios of its table; RoPE positions of every size are normalised to the
final grid of the 1M schedule of the same ratio, so the table is needed even at 0.06M.
"""

from __future__ import annotations

from collections.abc import Sequence

Schedule = list[tuple[int, int]]

VAE_STRIDE = 16

# The 13-scale 1M schedules of the official table, keyed by h/w; values are (h, w) token grids.
_TALL_1M: dict[float, Schedule] = {
    1.000: [
        (1, 1),
        (2, 2),
        (4, 4),
        (6, 6),
        (8, 8),
        (12, 12),
        (16, 16),
        (20, 20),
        (24, 24),
        (32, 32),
        (40, 40),
        (48, 48),
        (64, 64),
    ],
    1.250: [
        (1, 1),
        (2, 2),
        (3, 3),
        (5, 4),
        (10, 8),
        (15, 12),
        (20, 16),
        (25, 20),
        (30, 24),
        (35, 28),
        (45, 36),
        (55, 44),
        (70, 56),
    ],
    1.333: [
        (1, 1),
        (2, 2),
        (4, 3),
        (8, 6),
        (12, 9),
        (16, 12),
        (20, 15),
        (24, 18),
        (28, 21),
        (36, 27),
        (48, 36),
        (60, 45),
        (72, 54),
    ],
    1.500: [
        (1, 1),
        (2, 2),
        (3, 2),
        (6, 4),
        (9, 6),
        (15, 10),
        (21, 14),
        (27, 18),
        (33, 22),
        (39, 26),
        (48, 32),
        (63, 42),
        (78, 52),
    ],
    1.750: [
        (1, 1),
        (2, 2),
        (3, 3),
        (7, 4),
        (11, 6),
        (14, 8),
        (21, 12),
        (28, 16),
        (35, 20),
        (42, 24),
        (56, 32),
        (70, 40),
        (84, 48),
    ],
    2.000: [
        (1, 1),
        (2, 2),
        (4, 2),
        (6, 3),
        (10, 5),
        (16, 8),
        (22, 11),
        (30, 15),
        (38, 19),
        (46, 23),
        (60, 30),
        (74, 37),
        (90, 45),
    ],
    2.500: [
        (1, 1),
        (2, 2),
        (5, 2),
        (10, 4),
        (15, 6),
        (20, 8),
        (25, 10),
        (30, 12),
        (40, 16),
        (50, 20),
        (65, 26),
        (80, 32),
        (100, 40),
    ],
    3.000: [
        (1, 1),
        (2, 2),
        (6, 2),
        (9, 3),
        (15, 5),
        (21, 7),
        (27, 9),
        (36, 12),
        (45, 15),
        (54, 18),
        (72, 24),
        (90, 30),
        (111, 37),
    ],
}

#: Number of scales of each pixel budget (a prefix of the 1M schedule).
PN_NUM_SCALES: dict[str, int] = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}


def _with_wide_ratios() -> dict[float, Schedule]:
    table = dict(_TALL_1M)
    for ratio, hws in _TALL_1M.items():
        if ratio != 1.0:
            # The official key of a wide ratio is 1/ratio truncated to three decimals (1/1.333 -> 0.75).
            table[int(1 / ratio * 1000) / 1000] = [(w, h) for h, w in hws]
    return dict(sorted(table.items()))


SCHEDULES_1M: dict[float, Schedule] = _with_wide_ratios()
H_DIV_W_TEMPLATES: tuple[float, ...] = tuple(SCHEDULES_1M)


class ScheduleError(ValueError):
    """An aspect ratio or pixel budget that has no official schedule."""


def _template(h_div_w: float) -> float:
    for t in H_DIV_W_TEMPLATES:
        if abs(t - h_div_w) < 1e-3:
            return t
    raise ScheduleError(
        f"aspect ratio h/w={h_div_w} has no official Infinity schedule; "
        f"choose one of {', '.join(f'{t:g}' for t in H_DIV_W_TEMPLATES)} (or map it with nearest_h_div_w)"
    )


def nearest_h_div_w(h_div_w: float) -> float:
    """The official template closest to an arbitrary h/w ratio (how Infinity buckets photos)."""
    if not h_div_w > 0:
        raise ScheduleError(f"aspect ratio h/w must be positive, got {h_div_w}")
    return min(H_DIV_W_TEMPLATES, key=lambda t: abs(t - h_div_w))


def get_schedule(h_div_w: float = 1.0, pn: str = "1M") -> Schedule:
    """The official schedule for an aspect-ratio template and a pixel budget ('0.06M', '0.25M', '0.60M', '1M')."""
    if pn not in PN_NUM_SCALES:
        raise ScheduleError(
            f"pixel budget pn={pn!r} has no official schedule; choose one of {list(PN_NUM_SCALES)}"
        )
    return list(SCHEDULES_1M[_template(h_div_w)][: PN_NUM_SCALES[pn]])


def rope_reference_grid(h_div_w: float) -> tuple[int, int]:
    """The final grid of the 1M schedule of this ratio: RoPE positions of every size are measured on it."""
    return SCHEDULES_1M[_template(h_div_w)][-1]


def schedule_h_div_w(schedule: Sequence[tuple[int, int]]) -> float:
    """The template whose table holds this schedule (needed to find the RoPE reference grid)."""
    sched = [tuple(s) for s in schedule]
    for t, full in SCHEDULES_1M.items():
        if full[: len(sched)] == sched:
            return t
    raise ScheduleError(f"schedule {sched} is not a prefix of any official Infinity schedule")


def num_tokens(schedule: Sequence[tuple[int, int]]) -> int:
    return sum(h * w for h, w in schedule)


def scale_token_offsets(schedule: Sequence[tuple[int, int]]) -> list[int]:
    """Cumulative token counts, length K+1: scale s owns tokens offsets[s]:offsets[s+1]."""
    offsets = [0]
    for h, w in schedule:
        offsets.append(offsets[-1] + h * w)
    return offsets


def image_size(schedule: Sequence[tuple[int, int]], patch_size: int = VAE_STRIDE) -> tuple[int, int]:
    """Pixel (H, W) of the image a schedule decodes to."""
    h, w = schedule[-1]
    return h * patch_size, w * patch_size
