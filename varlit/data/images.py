"""Robust photo loading and the paper's preprocessing (resize to cover, centre crop, scale to [-1, 1]).

Subject photos come from users' phones and the web, so every failure mode gets a `BadImageError` that names
the file and the reason, and every odd-but-valid photo (EXIF rotation, CMYK, 16-bit, alpha, palette) is
normalised to upright 8-bit RGB instead of being silently mangled by a plain `convert("RGB")`.

Resampling: the released ARBooth fine-tuning code resizes the short side with (antialiased) bilinear and
centre-crops; Infinity's pre-training pipeline resizes to cover the target with Lanczos and centre-crops. The
default here is ARBooth's bilinear (it is what the method was tuned with); "lanczos" and "bicubic" are options.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

#: Largest photo (in pixels) we decode; a 12000 x 8000 photo fits. Larger files are rejected as possible
#: decompression bombs before any pixel is decoded.
DEFAULT_MAX_PIXELS = 100_000_000

Resample = Literal["bilinear", "bicubic", "lanczos"]
_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

# Alpha is composited onto white: subject photos with transparency are usually cut-out product shots,
# whose hidden RGB under alpha 0 is arbitrary (often black).
_ALPHA_BACKGROUND = (255, 255, 255)


class BadImageError(ValueError):
    """A photo that cannot be used; `path` and `reason` say which and why."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def file_sha256(path: str | Path) -> str:
    """Content hash of a file: the cache key and the duplicate detector."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        # convert("RGB") would clip every 16-bit value above 255 to white; rescale to 8 bits instead.
        arr = np.asarray(img).astype(np.float64)
        full = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        if mode == "F":
            full = 1.0 if arr.max() <= 1.0 else 255.0
        arr8 = np.clip(np.rint(arr / full * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # L, 1, P, CMYK, YCbCr, LAB, HSV: PIL's own conversions are correct for these.
    return img.convert("RGB")


def _upright(img: Image.Image, path: Path) -> Image.Image:
    """Apply the EXIF orientation; a photo whose EXIF block is unreadable is used as stored, with a warning."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as err:  # malformed EXIF raises assorted errors (struct.error, KeyError, ValueError ...)
        log.warning("%s: unreadable EXIF orientation (%s); using the photo as stored", path, err)
        return img


def load_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a photo fully into an upright 8-bit RGB image, or raise `BadImageError` naming the reason."""
    path = Path(path)
    if not path.is_file():
        raise BadImageError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise BadImageError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit below; PIL's warning would only duplicate it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise BadImageError(
                        path,
                        f"image is {w}x{h} = {w * h} pixels, above the limit of {max_pixels} "
                        "(decompression-bomb guard); downscale it first",
                    )
                img.load()
                upright = _upright(img, path)
                rgb = _to_rgb(upright)
                rgb.load()
                return rgb.copy() if rgb is img else rgb
    except BadImageError:
        raise
    except Image.DecompressionBombError as err:
        raise BadImageError(path, f"decompression-bomb guard: {err}") from err
    except UnidentifiedImageError as err:
        raise BadImageError(path, "not a recognised image format (PIL cannot identify the file)") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        # PIL signals truncated and corrupt data with OSError ("image file is truncated", "broken data
        # stream"), SyntaxError (bad headers) or ValueError.
        raise BadImageError(path, f"corrupt or truncated image data: {err}") from err


@dataclass(frozen=True)
class CropBox:
    """Where a view is cut from the resized photo: a fraction in [0, 1] of the slack on each axis."""

    x: float = 0.5
    y: float = 0.5
    zoom: float = 1.0  # > 1 resizes past "cover" first, so the crop shows a smaller part of the photo
    flip: bool = False


def needs_upscale(size_wh: tuple[int, int], target_hw: tuple[int, int]) -> bool:
    w, h = size_wh
    th, tw = target_hw
    return th > h or tw > w


def resize_and_crop(
    img: Image.Image, target_hw: tuple[int, int], resample: Resample = "bilinear", box: CropBox | None = None
) -> Image.Image:
    """Resize so the photo covers target (H, W) (the short side when aspects match), then crop to it."""
    box = box or CropBox()
    th, tw = target_hw
    w, h = img.size
    scale = max(th / h, tw / w) * box.zoom
    new_w, new_h = max(tw, round(w * scale)), max(th, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), resample=_RESAMPLE[resample])
    left = int((new_w - tw) * box.x)
    top = int((new_h - th) * box.y)
    img = img.crop((left, top, left + tw, top + th))
    if box.flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """[3, H, W] uint8: the exact 8-bit result of preprocessing, the form the cache stores."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def uint8_to_pm1(pixels_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], the VAE's input range (x / 127.5 - 1, as Infinity does)."""
    return pixels_u8.float().div(127.5).sub(1.0)
