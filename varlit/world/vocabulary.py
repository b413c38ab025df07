"""The world's words: its object classes, colours and contexts (with the phrase a caption uses for each).

The lowest layer of the world: scenes, drawing and the subject catalogue all name things with these, so it
imports nothing of varlit.
"""

from __future__ import annotations

CLASSES: tuple[str, ...] = ("ball", "box", "cup", "star", "ring", "tree", "house", "fish")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (245, 215, 35),
    "green": (45, 165, 55),
    "blue": (35, 80, 215),
    "purple": (135, 55, 185),
    "pink": (250, 135, 195),
    "white": (245, 245, 245),
}
CONTEXTS: dict[str, str] = {  # context id -> the phrase captions use
    "beach": "on the beach",
    "snow": "in the snow",
    "grass": "on the grass",
    "night": "at night",
    "desert": "in the desert",
    "underwater": "under water",
    "carpet": "on a red carpet",
    "jungle": "in the jungle",
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
CONTEXT_NAMES: tuple[str, ...] = tuple(CONTEXTS)
