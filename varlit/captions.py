"""Captions under grid tiles (prompt and seed), so a grid says what made each image."""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LINE_HEIGHT = 11  # PIL's built-in bitmap font: about 6 x 11 px per character


def caption_band(text: str, width: int, max_lines: int | None = None) -> np.ndarray:
    """uint8 [h, width, 3]: `text` in black on white, wrapped to the width (all of it by default: the end
    of a prompt, its context, is what tells the rows of a grid apart; `max_lines` cuts it short)."""
    chars = max(4, (width - 4) // 6)
    lines = textwrap.wrap(text, chars, break_long_words=True) or [""]
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: chars - 3] + "..."
    band = Image.new("RGB", (width, LINE_HEIGHT * len(lines) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    font = ImageFont.load_default()
    for i, line in enumerate(lines):
        draw.text((2, 2 + i * LINE_HEIGHT), line, fill=(0, 0, 0), font=font)
    return np.asarray(band, dtype=np.uint8)


def with_caption(tile: np.ndarray, text: str, band_height: int | None = None) -> np.ndarray:
    """The tile with its caption band below; `band_height` pads every band of a grid to one height."""
    band = caption_band(text, tile.shape[1])
    if band_height is not None and band.shape[0] < band_height:
        pad = np.full((band_height - band.shape[0], tile.shape[1], 3), 255, dtype=np.uint8)
        band = np.concatenate([band, pad])
    return np.concatenate([tile, band])


def captioned_tiles(tiles: list[np.ndarray], captions: list[str]) -> list[np.ndarray]:
    """Every tile with its caption, all bands of the same height (tiles of one grid stay aligned)."""
    if len(captions) != len(tiles):
        raise ValueError(f"{len(captions)} captions for {len(tiles)} tiles")
    height = max(caption_band(c, t.shape[1]).shape[0] for t, c in zip(tiles, captions))
    return [with_caption(t, c, height) for t, c in zip(tiles, captions)]
