"""Where `varlit eval` keeps its images: `out/images/<subject>/<slug>/` with the settings they were made with.

A folder's `settings.json` fingerprint decides whether its PNGs are reused on a rerun (same settings) or
removed as stale (other settings), which is what makes an interrupted evaluation resumable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from ..io import atomic_write_json

IMAGES_DIR = "images"
REFERENCE_DIR = "_reference"
CLASS_DIR = "_class"
SETTINGS_FILE = "settings.json"


def valid_png(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        with Image.open(path) as im:
            im.verify()
            return im.format == "PNG"
    except Exception:  # any decoding failure means "generate it again"
        return False


class ImageStore:
    """`out/images/<subject>/<slug>/`: PNGs plus the settings fingerprint they were made with."""

    def __init__(self, out: Path):
        self.out = out
        self.root = out / IMAGES_DIR

    def dir(self, subject: str, slug: str) -> Path:
        return self.root / subject / slug

    def sample(self, subject: str, slug: str, seed: int) -> Path:
        return self.dir(subject, slug) / f"s{seed}.png"

    def class_sample(self, subject: str, i: int) -> Path:
        return self.dir(subject, CLASS_DIR) / f"c{i:03d}.png"

    def reference(self, subject: str, i: int) -> Path:
        return self.dir(subject, REFERENCE_DIR) / f"r{i:03d}.png"

    def claim(self, folder: Path, fingerprint: dict[str, Any]) -> bool:
        """Make `folder` hold images of `fingerprint`: stale PNGs (other settings) are removed first.
        Returns whether the folder already matched."""
        fingerprint = json.loads(json.dumps(fingerprint))  # JSON-normal form (lists, str keys)
        settings = folder / SETTINGS_FILE
        try:
            if json.loads(settings.read_text()) == fingerprint:
                return True
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            pass  # no or unreadable fingerprint: treat every PNG in the folder as stale
        for png in folder.glob("*.png"):
            png.unlink()
        atomic_write_json(settings, fingerprint)
        return False
