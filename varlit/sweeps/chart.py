"""Sweep charts drawn with PIL (the project does not depend on matplotlib).

`bar_chart`: one group of bars per variant, one bar per metric, optional error bars (a 95 % interval), a
zero line, y ticks at 1/2/5 x 10^k steps and a legend. A missing value (None) is marked "n/a" on the
baseline instead of drawn as zero. `line_chart`: one panel per metric, one line per variant against the
step, with its interval as a shaded band.
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


def _heading(d: ImageDraw.ImageDraw, left: int, title: str, subtitle: str, names: Sequence[str]) -> None:
    """Title, optional subtitle and a colour legend (one swatch per name, in COLORS order)."""
    small = _font(12)
    d.text((left, 8), title, fill=INK, font=_font(16))
    if subtitle:
        d.text((left, 30), subtitle, fill=INK, font=small)
    x = left
    for i, name in enumerate(names):
        d.rectangle([x, 54, x + 12, 66], fill=COLORS[i])
        d.text((x + 16, 53), name, fill=INK, font=small)
        x += int(small.getlength(name)) + 36


def bar_chart(
    groups: Sequence[str],
    series: Sequence[str],
    values: Sequence[Sequence[float | None]],
    title: str,
    subtitle: str = "",
    errors: Sequence[Sequence[float | None]] | None = None,
) -> Image.Image:
    """values[g][s]: the bar of series s in group g (None: missing); errors[g][s]: its error-bar half-width."""
    if len(values) != len(groups) or any(len(v) != len(series) for v in values):
        raise ValueError(f"values must be {len(groups)} groups x {len(series)} series")
    if errors is not None and (len(errors) != len(groups) or any(len(e) != len(series) for e in errors)):
        raise ValueError(f"errors must be {len(groups)} groups x {len(series)} series, like values")
    if len(series) > len(COLORS):
        raise ValueError(f"at most {len(COLORS)} series, got {len(series)}")
    small, label_font = _font(12), _font(13)
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

    _heading(d, left, title, subtitle, series)
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
            err = errors[g][s] if errors is not None else None
            if err:
                # The axis follows the bars; an interval wider than the plot is cut at its edge.
                mid, lo_y, hi_y = bx + BAR_W // 2, y_of(max(lo, v - err)), y_of(min(hi, v + err))
                d.line([(mid, hi_y), (mid, lo_y)], fill=INK)
                d.line([(mid - 3, hi_y), (mid + 3, hi_y)], fill=INK)
                d.line([(mid - 3, lo_y), (mid + 3, lo_y)], fill=INK)
        cx = left + g * group_w + group_w / 2
        d.text((cx - label_font.getlength(name) / 2, top + PLOT_H + 10), name, fill=INK, font=label_font)
    d.line([(left, zero), (width - right, zero)], fill=INK)
    d.line([(left, top), (left, top + PLOT_H)], fill=INK)
    return img


Curve = list[tuple[float, float, float | None]]  # (step, mean, interval half-width or None)
PANEL_W, PANEL_H = 300, 200


def _tint(color: tuple[int, int, int], amount: float = 0.75) -> tuple[int, int, int]:
    r, g, b = color
    return (round(r + (255 - r) * amount), round(g + (255 - g) * amount), round(b + (255 - b) * amount))


def line_chart(panels: Sequence[tuple[str, dict[str, Curve]]], title: str, subtitle: str = "") -> Image.Image:
    """One panel per (name, {line name: curve}); the same line names share a colour across panels."""
    if not panels:
        raise ValueError("line_chart needs at least one panel")
    names = list(dict.fromkeys(n for _, lines in panels for n in lines))
    if len(names) > len(COLORS):
        raise ValueError(f"at most {len(COLORS)} lines, got {len(names)}")
    small = _font(12)
    left, top, gap = 56, 100, 40
    width = left + len(panels) * (PANEL_W + gap)
    height = top + PANEL_H + 70
    img = Image.new("RGB", (width, height), BACKGROUND)
    d = ImageDraw.Draw(img)
    _heading(d, left, title, subtitle, names)
    for p, (panel_name, lines) in enumerate(panels):
        x0 = left + p * (PANEL_W + gap)
        points = [pt for curve in lines.values() for pt in curve]
        xs = [pt[0] for pt in points]
        ys = [pt[1] + sign * (pt[2] or 0.0) for pt in points for sign in (-1, 1)]
        yt = nice_ticks(min(ys), max(ys), 4)
        x_lo, x_hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1

        def px(step: float, x0: int = x0, x_lo: float = x_lo, x_hi: float = x_hi) -> int:
            return round(x0 + PANEL_W * (step - x_lo) / (x_hi - x_lo))

        def py(v: float, yt: list[float] = yt) -> int:
            return round(top + PANEL_H * (yt[-1] - v) / (yt[-1] - yt[0]))

        for t in yt:
            d.line([(x0, py(t)), (x0 + PANEL_W, py(t))], fill=GRID)
            text = f"{t:g}"
            d.text((x0 - 6 - small.getlength(text), py(t) - 7), text, fill=INK, font=small)
        for i, name in enumerate(names):
            curve = sorted(lines.get(name, []))
            band = [pt for pt in curve if pt[2] is not None]
            if len(band) >= 2:
                upper = [(px(s), py(m + e)) for s, m, e in band]
                lower = [(px(s), py(m - e)) for s, m, e in reversed(band)]
                d.polygon(upper + lower, fill=_tint(COLORS[i]))
        for i, name in enumerate(names):
            curve = sorted(lines.get(name, []))
            if len(curve) >= 2:
                d.line([(px(s), py(m)) for s, m, _ in curve], fill=COLORS[i], width=2)
            for s, m, _ in curve:
                d.ellipse([px(s) - 2, py(m) - 2, px(s) + 2, py(m) + 2], fill=COLORS[i])
        d.rectangle([x0, top, x0 + PANEL_W, top + PANEL_H], outline=INK)
        for s in sorted(set(xs)):
            d.text((px(s) - small.getlength(f"{s:g}") / 2, top + PANEL_H + 4), f"{s:g}", fill=INK, font=small)
        d.text((x0, top + PANEL_H + 22), "step", fill=INK, font=small)
        d.text((x0, top - 16), panel_name, fill=INK, font=small)
    return img
