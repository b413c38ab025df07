"""Every entry of the official Infinity schedule table, written out as facts.

Source: FoundationVision/Infinity at commit 4c27bbb, `infinity/utils/dynamic_resolution.py` (read, not
imported): for each of the 15 aspect-ratio templates (h/w; a wide template's key is 1/ratio truncated to
three decimals) and each pixel budget, the (h, w) token grid of every scale (t = 1 for images) and the
image size in pixels (16 x the last grid). A single changed grid anywhere fails here.
"""

from __future__ import annotations

import pytest

from varlit.models.schedules import (
    H_DIV_W_TEMPLATES,
    PN_NUM_SCALES,
    get_schedule,
    image_size,
    rope_reference_grid,
    schedule_h_div_w,
)

# (h/w template, pixel budget): (token grids "h x w" per scale, image (H, W) in pixels)
OFFICIAL = {
    (0.333, "0.06M"): ("1x1 2x2 2x6 3x9 5x15 7x21 9x27", (144, 432)),
    (0.333, "0.25M"): ("1x1 2x2 2x6 3x9 5x15 7x21 9x27 12x36 15x45 18x54", (288, 864)),
    (0.333, "0.60M"): ("1x1 2x2 2x6 3x9 5x15 7x21 9x27 12x36 15x45 18x54 24x72 30x90", (480, 1440)),
    (0.333, "1M"): ("1x1 2x2 2x6 3x9 5x15 7x21 9x27 12x36 15x45 18x54 24x72 30x90 37x111", (592, 1776)),
    (0.4, "0.06M"): ("1x1 2x2 2x5 4x10 6x15 8x20 10x25", (160, 400)),
    (0.4, "0.25M"): ("1x1 2x2 2x5 4x10 6x15 8x20 10x25 12x30 16x40 20x50", (320, 800)),
    (0.4, "0.60M"): ("1x1 2x2 2x5 4x10 6x15 8x20 10x25 12x30 16x40 20x50 26x65 32x80", (512, 1280)),
    (0.4, "1M"): ("1x1 2x2 2x5 4x10 6x15 8x20 10x25 12x30 16x40 20x50 26x65 32x80 40x100", (640, 1600)),
    (0.5, "0.06M"): ("1x1 2x2 2x4 3x6 5x10 8x16 11x22", (176, 352)),
    (0.5, "0.25M"): ("1x1 2x2 2x4 3x6 5x10 8x16 11x22 15x30 19x38 23x46", (368, 736)),
    (0.5, "0.60M"): ("1x1 2x2 2x4 3x6 5x10 8x16 11x22 15x30 19x38 23x46 30x60 37x74", (592, 1184)),
    (0.5, "1M"): ("1x1 2x2 2x4 3x6 5x10 8x16 11x22 15x30 19x38 23x46 30x60 37x74 45x90", (720, 1440)),
    (0.571, "0.06M"): ("1x1 2x2 3x3 4x7 6x11 8x14 12x21", (192, 336)),
    (0.571, "0.25M"): ("1x1 2x2 3x3 4x7 6x11 8x14 12x21 16x28 20x35 24x42", (384, 672)),
    (0.571, "0.60M"): ("1x1 2x2 3x3 4x7 6x11 8x14 12x21 16x28 20x35 24x42 32x56 40x70", (640, 1120)),
    (0.571, "1M"): ("1x1 2x2 3x3 4x7 6x11 8x14 12x21 16x28 20x35 24x42 32x56 40x70 48x84", (768, 1344)),
    (0.666, "0.06M"): ("1x1 2x2 2x3 4x6 6x9 10x15 14x21", (224, 336)),
    (0.666, "0.25M"): ("1x1 2x2 2x3 4x6 6x9 10x15 14x21 18x27 22x33 26x39", (416, 624)),
    (0.666, "0.60M"): ("1x1 2x2 2x3 4x6 6x9 10x15 14x21 18x27 22x33 26x39 32x48 42x63", (672, 1008)),
    (0.666, "1M"): ("1x1 2x2 2x3 4x6 6x9 10x15 14x21 18x27 22x33 26x39 32x48 42x63 52x78", (832, 1248)),
    (0.75, "0.06M"): ("1x1 2x2 3x4 6x8 9x12 12x16 15x20", (240, 320)),
    (0.75, "0.25M"): ("1x1 2x2 3x4 6x8 9x12 12x16 15x20 18x24 21x28 27x36", (432, 576)),
    (0.75, "0.60M"): ("1x1 2x2 3x4 6x8 9x12 12x16 15x20 18x24 21x28 27x36 36x48 45x60", (720, 960)),
    (0.75, "1M"): ("1x1 2x2 3x4 6x8 9x12 12x16 15x20 18x24 21x28 27x36 36x48 45x60 54x72", (864, 1152)),
    (0.8, "0.06M"): ("1x1 2x2 3x3 4x5 8x10 12x15 16x20", (256, 320)),
    (0.8, "0.25M"): ("1x1 2x2 3x3 4x5 8x10 12x15 16x20 20x25 24x30 28x35", (448, 560)),
    (0.8, "0.60M"): ("1x1 2x2 3x3 4x5 8x10 12x15 16x20 20x25 24x30 28x35 36x45 44x55", (704, 880)),
    (0.8, "1M"): ("1x1 2x2 3x3 4x5 8x10 12x15 16x20 20x25 24x30 28x35 36x45 44x55 56x70", (896, 1120)),
    (1.0, "0.06M"): ("1x1 2x2 4x4 6x6 8x8 12x12 16x16", (256, 256)),
    (1.0, "0.25M"): ("1x1 2x2 4x4 6x6 8x8 12x12 16x16 20x20 24x24 32x32", (512, 512)),
    (1.0, "0.60M"): ("1x1 2x2 4x4 6x6 8x8 12x12 16x16 20x20 24x24 32x32 40x40 48x48", (768, 768)),
    (1.0, "1M"): ("1x1 2x2 4x4 6x6 8x8 12x12 16x16 20x20 24x24 32x32 40x40 48x48 64x64", (1024, 1024)),
    (1.25, "0.06M"): ("1x1 2x2 3x3 5x4 10x8 15x12 20x16", (320, 256)),
    (1.25, "0.25M"): ("1x1 2x2 3x3 5x4 10x8 15x12 20x16 25x20 30x24 35x28", (560, 448)),
    (1.25, "0.60M"): ("1x1 2x2 3x3 5x4 10x8 15x12 20x16 25x20 30x24 35x28 45x36 55x44", (880, 704)),
    (1.25, "1M"): ("1x1 2x2 3x3 5x4 10x8 15x12 20x16 25x20 30x24 35x28 45x36 55x44 70x56", (1120, 896)),
    (1.333, "0.06M"): ("1x1 2x2 4x3 8x6 12x9 16x12 20x15", (320, 240)),
    (1.333, "0.25M"): ("1x1 2x2 4x3 8x6 12x9 16x12 20x15 24x18 28x21 36x27", (576, 432)),
    (1.333, "0.60M"): ("1x1 2x2 4x3 8x6 12x9 16x12 20x15 24x18 28x21 36x27 48x36 60x45", (960, 720)),
    (1.333, "1M"): ("1x1 2x2 4x3 8x6 12x9 16x12 20x15 24x18 28x21 36x27 48x36 60x45 72x54", (1152, 864)),
    (1.5, "0.06M"): ("1x1 2x2 3x2 6x4 9x6 15x10 21x14", (336, 224)),
    (1.5, "0.25M"): ("1x1 2x2 3x2 6x4 9x6 15x10 21x14 27x18 33x22 39x26", (624, 416)),
    (1.5, "0.60M"): ("1x1 2x2 3x2 6x4 9x6 15x10 21x14 27x18 33x22 39x26 48x32 63x42", (1008, 672)),
    (1.5, "1M"): ("1x1 2x2 3x2 6x4 9x6 15x10 21x14 27x18 33x22 39x26 48x32 63x42 78x52", (1248, 832)),
    (1.75, "0.06M"): ("1x1 2x2 3x3 7x4 11x6 14x8 21x12", (336, 192)),
    (1.75, "0.25M"): ("1x1 2x2 3x3 7x4 11x6 14x8 21x12 28x16 35x20 42x24", (672, 384)),
    (1.75, "0.60M"): ("1x1 2x2 3x3 7x4 11x6 14x8 21x12 28x16 35x20 42x24 56x32 70x40", (1120, 640)),
    (1.75, "1M"): ("1x1 2x2 3x3 7x4 11x6 14x8 21x12 28x16 35x20 42x24 56x32 70x40 84x48", (1344, 768)),
    (2.0, "0.06M"): ("1x1 2x2 4x2 6x3 10x5 16x8 22x11", (352, 176)),
    (2.0, "0.25M"): ("1x1 2x2 4x2 6x3 10x5 16x8 22x11 30x15 38x19 46x23", (736, 368)),
    (2.0, "0.60M"): ("1x1 2x2 4x2 6x3 10x5 16x8 22x11 30x15 38x19 46x23 60x30 74x37", (1184, 592)),
    (2.0, "1M"): ("1x1 2x2 4x2 6x3 10x5 16x8 22x11 30x15 38x19 46x23 60x30 74x37 90x45", (1440, 720)),
    (2.5, "0.06M"): ("1x1 2x2 5x2 10x4 15x6 20x8 25x10", (400, 160)),
    (2.5, "0.25M"): ("1x1 2x2 5x2 10x4 15x6 20x8 25x10 30x12 40x16 50x20", (800, 320)),
    (2.5, "0.60M"): ("1x1 2x2 5x2 10x4 15x6 20x8 25x10 30x12 40x16 50x20 65x26 80x32", (1280, 512)),
    (2.5, "1M"): ("1x1 2x2 5x2 10x4 15x6 20x8 25x10 30x12 40x16 50x20 65x26 80x32 100x40", (1600, 640)),
    (3.0, "0.06M"): ("1x1 2x2 6x2 9x3 15x5 21x7 27x9", (432, 144)),
    (3.0, "0.25M"): ("1x1 2x2 6x2 9x3 15x5 21x7 27x9 36x12 45x15 54x18", (864, 288)),
    (3.0, "0.60M"): ("1x1 2x2 6x2 9x3 15x5 21x7 27x9 36x12 45x15 54x18 72x24 90x30", (1440, 480)),
    (3.0, "1M"): ("1x1 2x2 6x2 9x3 15x5 21x7 27x9 36x12 45x15 54x18 72x24 90x30 111x37", (1776, 592)),
}


def _grids(text: str) -> list[tuple[int, int]]:
    return [(int(h), int(w)) for h, w in (g.split("x") for g in text.split())]


def test_the_table_has_every_template_and_budget():
    assert len(OFFICIAL) == 60
    assert sorted(H_DIV_W_TEMPLATES) == sorted({r for r, _ in OFFICIAL})
    assert set(PN_NUM_SCALES) == {pn for _, pn in OFFICIAL}


@pytest.mark.parametrize(("h_div_w", "pn"), list(OFFICIAL), ids=[f"{r}-{pn}" for r, pn in OFFICIAL])
def test_schedule_equals_the_official_entry(h_div_w: float, pn: str):
    grids, pixels = OFFICIAL[(h_div_w, pn)]
    sched = get_schedule(h_div_w, pn)
    assert [tuple(s) for s in sched] == _grids(grids)
    assert image_size(sched) == pixels
    assert schedule_h_div_w(sched) == h_div_w
    assert rope_reference_grid(h_div_w) == _grids(OFFICIAL[(h_div_w, "1M")][0])[-1]
