"""Captioned images for pretraining: the procedural world, or any folder of images with `.txt` captions.

World scenes come from fixed, cached pools (`varlit.world.pool`); a scene's caption is drawn afresh from
its spec every time it is used. A folder is read once: `x.png` (or .jpg/.jpeg/.webp) pairs with `x.txt`,
images are resized on the short side, centre-cropped to the preset's resolution and scaled to [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def to_unit_range(pixels_NHW3: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1]."""
    from varlit.data.images import uint8_to_pm1

    return uint8_to_pm1(torch.from_numpy(pixels_NHW3).permute(0, 3, 1, 2))


class _WorldDataset(Dataset):
    def __init__(self, pool, seed: int, fixed_captions: bool):
        self.pool, self.seed, self.fixed = pool, seed, fixed_captions
        self.draws = 0  # advances caption draws across epochs (num_workers=0 keeps it deterministic)

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, int]:
        from varlit.world.pool import caption_for

        key = [self.seed, i] if self.fixed else [self.seed, i, self.draws]
        self.draws += 0 if self.fixed else 1
        pixels = to_unit_range(self.pool.pixels[i : i + 1])[0]
        return pixels, caption_for(self.pool, i, np.random.default_rng(key)), i


class _FolderDataset(Dataset):
    def __init__(self, pixels: torch.Tensor, captions: list[str]):
        self.pixels, self.captions = pixels, captions

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, int]:
        return self.pixels[i], self.captions[i], i


def _collate(items: list[tuple[torch.Tensor, str, int]]) -> dict:
    """Pixels, captions, and each image's index in its (fixed) set: the key of the latent cache."""
    pixels, captions, index = zip(*items)
    return {"pixels": torch.stack(pixels), "captions": list(captions), "index": torch.tensor(index)}


def read_captioned_folder(root: Path, size: int) -> tuple[torch.Tensor, list[str]]:
    """Every image of `root` that has a same-named `.txt` caption; a missing caption is an error by name."""
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"pretraining folder {root} does not exist or is not a directory")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"pretraining folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    pixels, captions = [], []
    for f in files:
        txt = f.with_suffix(".txt")
        if not txt.exists():
            raise ValueError(f"{f}: no caption file {txt.name} beside it")
        try:
            with Image.open(f) as im:
                im = im.convert("RGB")
                scale = size / min(im.size)
                im = im.resize(
                    (max(size, round(im.width * scale)), max(size, round(im.height * scale))), Image.BICUBIC
                )
                left, top = (im.width - size) // 2, (im.height - size) // 2
                pixels.append(np.asarray(im.crop((left, top, left + size, top + size))))
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"{f}: cannot read image ({err})") from None
        captions.append(txt.read_text().strip())
    return to_unit_range(np.stack(pixels)), captions


class PretrainDataModule(LightningDataModule):
    """Images and captions for `varlit pretrain`.

    Args:
        source: `world` (procedural scenes) or the path of a folder of images with `.txt` captions.
        num_images: size of the world's training pool (ignored for a folder).
        val_images: world validation scenes (a disjoint stream); for a folder, the last images held out.
        image_size: pixels per side (64 for the world preset; use the preset's resolution for others).
        seed: the world stream of the training pool (validation uses seed + 1000).
        cache_dir: where rendered world pools are cached.
    """

    def __init__(
        self,
        source: str = "world",
        num_images: int = 16384,
        val_images: int = 256,
        image_size: int = 64,
        batch_size: int = 32,
        val_batch_size: int = 64,
        seed: int = 0,
        cache_dir: str = "runs/.cache/world",
    ):
        super().__init__()
        self.source, self.num_images, self.val_images = source, num_images, val_images
        self.image_size, self.batch_size, self.val_batch_size = image_size, batch_size, val_batch_size
        self.seed, self.cache_dir = seed, cache_dir
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.source == "world":
            from varlit.world.pool import cached_pool
            from varlit.world.scenes import IMAGE_SIZE

            if self.image_size != IMAGE_SIZE:
                raise ValueError(
                    f"data.image_size: the world renders {IMAGE_SIZE} px scenes, got {self.image_size}"
                )
            self.train_set = _WorldDataset(
                cached_pool(self.cache_dir, self.num_images, self.seed), self.seed, False
            )
            val_pool = cached_pool(self.cache_dir, self.val_images, self.seed + 1000)
            self.val_set = _WorldDataset(val_pool, self.seed + 1000, True)
        else:
            pixels, captions = read_captioned_folder(Path(self.source), self.image_size)
            n_val = min(self.val_images, len(captions) // 5)
            cut = len(captions) - n_val
            self.train_set = _FolderDataset(pixels[:cut], captions[:cut])
            self.val_set = _FolderDataset(pixels[cut:], captions[cut:]) if n_val else None

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, self.batch_size, shuffle=True, drop_last=True, collate_fn=_collate)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, self.val_batch_size, shuffle=False, collate_fn=_collate)
