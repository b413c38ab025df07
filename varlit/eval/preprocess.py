"""Image preprocessing of the reference evaluation protocol, in pure torch (no torchvision).

What the reference does (ARBooth `tools/evaluate.py`, with evaluators inherited from DreamMatcher):

1. Every image, real photo or saved 8-bit sample, is opened with PIL, converted to RGB (no EXIF
   rotation) and resized to exactly 256 x 256 with PIL bicubic. That is a squash: the aspect ratio is not
   kept and nothing is cropped. Then uint8 -> [-1, 1] as x / 127.5 - 1.
2. DINO (torch.hub `dino_vits16`): the [-1, 1] 256 x 256 tensor goes into the ViT *as is*: no ImageNet
   mean/std and no resize to 224 (the ViT interpolates its position embeddings to the 16 x 16 patch grid).
   The feature is the CLS token after the final LayerNorm.
3. CLIP (OpenAI ViT-B/32): [-1, 1] -> [0, 1], torchvision `Resize(224, bicubic)` + `CenterCrop(224)` (a
   no-op after the squash), then `Normalize` with CLIP's mean/std.
4. LPIPS (AlexNet) compares the [-1, 1] 256 x 256 tensors.

What varlit does:

- `load_image` is step 1 for files, with PIL exactly as the reference.
- `squash` is step 1 for tensors already in memory (generated samples are never written to disk first):
  quantise to 8-bit levels (the file save), bicubic resize with antialias, clamp, quantise again (PIL
  resizes in uint8). torch's antialiased bicubic uses PIL's kernel (a = -0.5, support scaled with the
  downscale factor); against PIL it differs by at most one 8-bit level (checked in the tests).
- `ImagePreprocess` is steps 2-3: an optional resize (an int resizes the shorter side like torchvision's
  `Resize(int)`, a pair resizes to exactly (h, w)), an optional centre crop, then (x01 - mean) / std.
  The DINO reference setting is no resize and mean = std = 0.5, which leaves the [-1, 1] tensor unchanged.
  Resizes are `F.interpolate(..., antialias=True, align_corners=False)`, i.e. torchvision >= 0.17 on tensors
  (older torchvision resized tensors without antialias; the reference's version is not pinned).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

#: Side of the square every image is squashed to before any backbone sees it (reference protocol).
EVAL_SIZE = 256

Interpolation = Literal["bilinear", "bicubic"]
RGB = tuple[float, float, float]

# PIL resample codes as stored in Hugging Face preprocessor_config.json files.
PIL_RESAMPLE_TO_MODE: dict[int, Interpolation] = {2: "bilinear", 3: "bicubic"}


def check_images(images: Tensor, name: str = "images") -> Tensor:
    """Shape/dtype check without a host sync (the range is the caller's contract: [-1, 1])."""
    if not isinstance(images, Tensor):
        raise TypeError(
            f"{name}: expected a torch.Tensor [N, 3, H, W] in [-1, 1], got {type(images).__name__}"
        )
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name}: expected shape [N, 3, H, W] in [-1, 1], got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{name}: expected a floating tensor in [-1, 1], got dtype {images.dtype}")
    return images


def quantize_uint8(img: Tensor) -> Tensor:
    """Round [-1, 1] images to the 256 levels an 8-bit image file can hold (and clamp)."""
    return (img.add(1).mul(127.5).round().clamp(0, 255)).div(127.5).sub(1)


def resize(img_B3HW: Tensor, size: tuple[int, int], mode: Interpolation = "bicubic") -> Tensor:
    """Antialiased resize to exactly `size` = (h, w); returns the input when it already has that size."""
    if tuple(img_B3HW.shape[-2:]) == tuple(size):
        return img_B3HW
    return F.interpolate(img_B3HW.float(), size=size, mode=mode, antialias=True, align_corners=False)


def shorter_side_size(height: int, width: int, side: int) -> tuple[int, int]:
    """Output size of torchvision's `Resize(side)`: the shorter side becomes `side`, the longer one is floored."""
    if height <= width:
        return side, int(side * width / height)
    return int(side * height / width), side


def center_crop(img_B3HW: Tensor, size: tuple[int, int]) -> Tensor:
    """Centre crop with torchvision's rounding of the offsets."""
    h, w = img_B3HW.shape[-2:]
    ch, cw = size
    if ch > h or cw > w:
        raise ValueError(f"center_crop: crop {size} is larger than the image ({h}, {w})")
    top = int(round((h - ch) / 2.0))
    left = int(round((w - cw) / 2.0))
    return img_B3HW[..., top : top + ch, left : left + cw]


def squash(img_B3HW: Tensor, size: int = EVAL_SIZE, quantize: bool = True) -> Tensor:
    """In-memory version of "save as 8-bit, reopen, PIL-resize to size x size (bicubic)"; stays in [-1, 1]."""
    check_images(img_B3HW)
    x = quantize_uint8(img_B3HW.float()) if quantize else img_B3HW.float()
    x = resize(x, (size, size), "bicubic").clamp(-1, 1)
    return quantize_uint8(x) if quantize else x


def squash_many(
    images: Tensor | Sequence[Tensor], size: int | None = EVAL_SIZE, quantize: bool = True
) -> Tensor:
    """`squash` for a batch tensor or for a list of [3, H, W] images of different sizes (subject photos)."""
    if isinstance(images, Tensor):
        check_images(images)
        return images.float() if size is None else squash(images, size, quantize)
    if len(images) == 0:
        raise ValueError("squash_many: got an empty list of images")
    if size is None:
        shapes = {tuple(im.shape) for im in images}
        if len(shapes) != 1:
            raise ValueError(f"squash_many: images of different shapes {sorted(shapes)} need a squash size")
        return check_images(torch.stack(list(images)), "images").float()
    out = []
    for i, im in enumerate(images):
        if im.ndim != 3:
            raise ValueError(f"images[{i}]: expected [3, H, W], got {tuple(im.shape)}")
        out.append(squash(check_images(im[None], f"images[{i}]"), size, quantize))
    return torch.cat(out)


@dataclass(frozen=True)
class ImagePreprocess:
    """What one backbone does to a squashed [-1, 1] image: optional resize and centre crop, then mean/std.

    `resize`: int = shorter side (torchvision `Resize(int)`), (h, w) = exact size, None = keep the size.
    `crop`: (h, w) of a centre crop, or None.
    """

    resize: int | tuple[int, int] | None
    crop: tuple[int, int] | None
    mean: RGB
    std: RGB
    interpolation: Interpolation = "bicubic"

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"ImagePreprocess: mean/std need 3 values, got {self.mean} / {self.std}")
        if min(self.std) <= 0:
            raise ValueError(f"ImagePreprocess: std must be positive, got {self.std}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(
                f"ImagePreprocess: interpolation must be bilinear or bicubic, got {self.interpolation}"
            )
        sizes = [self.resize] if isinstance(self.resize, int) else list(self.resize or [])
        sizes += list(self.crop or [])
        if any(int(s) <= 0 for s in sizes):
            raise ValueError(
                f"ImagePreprocess: sizes must be positive, got resize={self.resize} crop={self.crop}"
            )

    def __call__(self, img_B3HW: Tensor) -> Tensor:
        x = img_B3HW.float().add(1).mul(0.5)
        if isinstance(self.resize, int):
            x = resize(x, shorter_side_size(*x.shape[-2:], self.resize), self.interpolation)
        elif self.resize is not None:
            x = resize(x, tuple(self.resize), self.interpolation)
        if self.crop is not None:
            x = center_crop(x, tuple(self.crop))
        mean = x.new_tensor(self.mean).view(1, 3, 1, 1)
        std = x.new_tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std


#: DINO as the reference feeds it: the squashed [-1, 1] tensor unchanged.
DINO_REFERENCE = ImagePreprocess(resize=None, crop=None, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

# OpenAI CLIP's normalisation (the values in every openai/clip-* preprocessor_config.json).
OPENAI_CLIP_MEAN: RGB = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: RGB = (0.26862954, 0.26130258, 0.27577711)


def clip_reference(
    image_size: int, mean: RGB = OPENAI_CLIP_MEAN, std: RGB = OPENAI_CLIP_STD
) -> ImagePreprocess:
    """CLIP as the reference feeds it: Resize(shorter side, bicubic) + CenterCrop, CLIP mean/std."""
    return ImagePreprocess(resize=image_size, crop=(image_size, image_size), mean=mean, std=std)


def load_image(path: str | Path, size: int | None = EVAL_SIZE, exif_transpose: bool = False) -> Tensor:
    """Reference step 1 for a file: PIL RGB, PIL bicubic squash to size x size, [-1, 1] float [3, H, W].

    `exif_transpose=False` is the reference (it ignores EXIF orientation); varlit's training loader applies it.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im) if exif_transpose else im
            rgb = im.convert("RGB")
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: no such image file") from e
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: cannot read as an image ({e})") from e
    if size is not None:
        rgb = rgb.resize((size, size), resample=Image.Resampling.BICUBIC)
    arr = np.array(rgb, dtype=np.uint8)
    return torch.from_numpy(arr).permute(2, 0, 1).float().div(127.5).sub(1)


def load_images(paths: Sequence[str | Path], size: int = EVAL_SIZE, exif_transpose: bool = False) -> Tensor:
    """`load_image` for several files -> [N, 3, size, size] in [-1, 1]."""
    if len(paths) == 0:
        raise ValueError("load_images: no image paths given")
    return torch.stack([load_image(p, size, exif_transpose) for p in paths])
