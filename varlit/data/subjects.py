"""A subject: a folder of a few photos of one thing plus its class word, validated before any model runs.

Bad photos are handled by one policy (`on_bad_image`): "error" stops with a list of every bad file and its
reason; "skip" logs each skipped file and carries on. Exact duplicate files (same content hash) are dropped
with a warning, since they would silently double that photo's weight in the loss.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

from varlit.data.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, BadImageError, file_sha256, load_rgb

log = logging.getLogger(__name__)

OnBadImage = Literal["error", "skip"]
PLACEHOLDER = "<placeholder>"
# A photo under this many pixels on its short side is 2x2 latents or fewer at the VAE stride of 16.
MIN_PHOTO_SIDE = 32
# Files beside the photos that are not meant as photos (notes, licences, metadata): never reported.
NOT_PHOTOS = frozenset({".txt", ".md", ".json", ".yaml", ".yml", ".csv", ".log", ".html", ".pdf"})


class SubjectError(ValueError):
    """The subject as a whole is unusable (missing folder, no class word, too few photos)."""


@dataclass(frozen=True)
class Subject:
    """Where a subject's photos are and what it is. `live` picks DreamBench's live-subject prompt list."""

    name: str
    class_word: str
    folder: Path
    live: bool = False


@dataclass
class SubjectPhoto:
    """One usable photo, decoded to upright RGB, with the content hash that keys its cache entries."""

    path: Path
    sha256: str
    image: Image.Image = field(repr=False)


def check_class_word(class_word: str | None, where: str) -> str:
    word = (class_word or "").strip()
    if not word:
        raise SubjectError(
            f"{where}: no class word given; the prompts need one, e.g. --data.class_word dog "
            "(the instance prompt becomes 'a photo of <placeholder> dog')"
        )
    return word


def list_image_files(folder: Path) -> list[Path]:
    """Image-extension files directly in `folder`, sorted by name; hidden files and sub-folders are ignored."""
    if not folder.exists():
        raise SubjectError(f"subject folder {folder} does not exist")
    if not folder.is_dir():
        raise SubjectError(f"subject folder {folder} is not a directory")
    files = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(p)
        else:
            log.debug("ignoring %s: not an image extension", p)
    if not files:
        raise SubjectError(
            f"subject folder {folder} holds no photos (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return files


def unsupported_files(folder: Path) -> list[Path]:
    """Files that look like photos varlit cannot read (.heic, .avif, camera raw ...): reported, not dropped."""
    return [
        p
        for p in sorted(folder.iterdir())
        if p.is_file()
        and not p.name.startswith(".")
        and p.suffix.lower() not in IMAGE_EXTENSIONS
        and p.suffix.lower() not in NOT_PHOTOS
    ]


def load_subject_photos(
    folder: Path,
    on_bad_image: OnBadImage = "error",
    min_images: int = 3,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[SubjectPhoto]:
    """Decode and validate every photo of a subject folder; see the module docstring for the policy."""
    if on_bad_image not in ("error", "skip"):
        raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    photos: list[SubjectPhoto] = []
    bad: list[BadImageError] = []
    seen: dict[str, Path] = {}
    for path in list_image_files(folder):
        try:
            image = load_rgb(path, max_pixels=max_pixels)
        except BadImageError as err:
            if on_bad_image == "skip":
                log.warning("skipping bad image %s: %s", err.path, err.reason)
            bad.append(err)
            continue
        if min(image.size) < MIN_PHOTO_SIDE:
            err = BadImageError(
                path,
                f"too small ({image.size[0]}x{image.size[1]}); a subject photo needs at least "
                f"{MIN_PHOTO_SIDE} px on its short side",
            )
            if on_bad_image == "skip":
                log.warning("skipping bad image %s: %s", err.path, err.reason)
            bad.append(err)
            continue
        digest = file_sha256(path)
        if digest in seen:
            log.warning("ignoring %s: duplicate of %s (identical file content)", path, seen[digest])
            continue
        seen[digest] = path
        photos.append(SubjectPhoto(path=path, sha256=digest, image=image))
    for path in unsupported_files(folder):
        err = BadImageError(path, f"unsupported photo format {path.suffix!r}; convert it to JPEG or PNG")
        if on_bad_image == "skip":
            log.warning("skipping %s: %s", err.path, err.reason)
        bad.append(err)
    if bad and on_bad_image == "error":
        listing = "\n".join(f"  {e.path}: {e.reason}" for e in bad)
        raise BadImageError(
            folder, f"{len(bad)} unusable photo(s) (set on_bad_image='skip' to leave them out):\n{listing}"
        )
    if len(photos) < min_images:
        skipped = "".join(f"\n  skipped {e.path}: {e.reason}" for e in bad)
        raise SubjectError(
            f"subject folder {folder} has {len(photos)} usable photo(s), fewer than min_images={min_images}"
            f"{skipped}"
        )
    return photos
