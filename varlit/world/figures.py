"""Labelled image grids: pictures a person reads at a glance (every tile says what it shows)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines


def labelled_grid(
    rows: Sequence[Sequence[np.ndarray]],
    row_labels: Sequence[str],
    tile_labels: Sequence[Sequence[str]] | None = None,
    scale: int = 2,
    label_width: int = 150,
) -> np.ndarray:
    """uint8 RGB picture: one row of tiles per entry, its label on the left, optional captions under tiles."""
    from PIL import Image, ImageDraw

    tile = rows[0][0].shape[0] * scale
    cols = max(len(r) for r in rows)
    cap_h = 24 if tile_labels else 0
    pad = 4
    H = len(rows) * (tile + cap_h + pad) + pad
    W = label_width + cols * (tile + pad) + pad
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        y = pad + r * (tile + cap_h + pad)
        for i, line in enumerate(_wrap(row_labels[r], 24)[:6]):
            draw.text((4, y + 4 + 11 * i), line, fill=(0, 0, 0))
        for c, img in enumerate(row):
            x = label_width + pad + c * (tile + pad)
            canvas.paste(Image.fromarray(img).resize((tile, tile), Image.NEAREST), (x, y))
            if tile_labels:
                for i, line in enumerate(_wrap(tile_labels[r][c], tile // 6)[:2]):
                    draw.text((x + 1, y + tile + 1 + 11 * i), line, fill=(60, 60, 60))
    return np.asarray(canvas)


def save_grid(path: str | Path, picture: np.ndarray) -> Path:
    from ..io import save_png

    return save_png(path, picture)
