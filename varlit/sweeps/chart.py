"""A grouped bar chart drawn with PIL (the project does not depend on matplotlib).

One group of bars per variant, one bar per metric, a zero line, y ticks at 1/2/5 x 10^k steps and a legend.
A missing value (None) is marked "n/a" on the baseline instead of drawn as zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

# Colour-blind-safe palette (Okabe-Ito), one per series in order.
COLORS: tuple[tuple[int, int, int], ...] = (
    (0, 114, 178),
    (230, 159, 0),
    (0, 158, 115),
    (204, 121, 167),
    (86, 180, 233),
    (213, 94, 0),
)
BACKGROUND = (255, 255, 255)
INK = (40, 40, 40)
GRID = (225, 225, 225)
BAR_W = 18
PLOT_H = 280


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] at a 1/2/5 x 10^k step, about `target` of them."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"tick range must be finite, got [{lo}, {hi}]")
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / target
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start, stop = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(i * step, 12) for i in range(start, stop + 1)]


def bar_chart(
    groups: Sequence[str],
    series: Sequence[str],
    values: Sequence[Sequence[float | None]],
    title: str,
    subtitle: str = "",
) -> Image.Image:
    """values[g][s]: the bar of series s in group g (None: missing)."""
    if len(values) != len(groups) or any(len(v) != len(series) for v in values):
        raise ValueError(f"values must be {len(groups)} groups x {len(series)} series")
    if len(series) > len(COLORS):
        raise ValueError(f"at most {len(COLORS)} series, got {len(series)}")
    small, label_font, title_font = _font(12), _font(13), _font(16)
    have = [v for row in values for v in row if v is not None]
    ticks = nice_ticks(min([0.0, *have]), max([0.0, *have]) if have else 1.0)
    lo, hi = ticks[0], ticks[-1]
    label_w = max([label_font.getlength(g) for g in groups] + [0.0])
    left, right, top = 64, 24, 78
    n = max(1, len(groups))
    group_w = int(max(len(series) * BAR_W + 24, label_w + 12, (640 - left - right) / n))
    width = left + right + group_w * n
    height = top + PLOT_H + 44
    img = Image.new("RGB", (width, height), BACKGROUND)
    d = ImageDraw.Draw(img)

    def y_of(v: float) -> int:
        return round(top + PLOT_H * (hi - v) / (hi - lo))

    d.text((left, 8), title, fill=INK, font=title_font)
    if subtitle:
        d.text((left, 30), subtitle, fill=INK, font=small)
    x = left
    for s, name in enumerate(series):  # legend
        d.rectangle([x, 54, x + 12, 66], fill=COLORS[s])
        d.text((x + 16, 53), name, fill=INK, font=small)
        x += int(small.getlength(name)) + 36
    for t in ticks:
        y = y_of(t)
        d.line([(left, y), (width - right, y)], fill=GRID)
        text = f"{t:g}"
        d.text((left - 6 - small.getlength(text), y - 7), text, fill=INK, font=small)
    zero = y_of(0.0)
    for g, name in enumerate(groups):
        gx = left + g * group_w + (group_w - len(series) * BAR_W) // 2
        for s, v in enumerate(values[g]):
            bx = gx + s * BAR_W
            if v is None:
                d.text((bx + 1, zero - 14), "n/a", fill=INK, font=_font(8))
                continue
            y = y_of(v)
            if y != zero:
                d.rectangle([bx + 1, min(y, zero), bx + BAR_W - 2, max(y, zero)], fill=COLORS[s])
        cx = left + g * group_w + group_w / 2
        d.text((cx - label_font.getlength(name) / 2, top + PLOT_H + 10), name, fill=INK, font=label_font)
    d.line([(left, zero), (width - right, zero)], fill=INK)
    d.line([(left, top), (left, top + PLOT_H)], fill=INK)
    return img
