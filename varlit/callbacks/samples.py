"""Sample grids: the validation images (fixed prompts and seed) as one PNG per validation, on disk and in
the logger, each tile captioned with its prompt and seed. Rows are prompts, so runs and steps compare at a
glance. The subject's photos come first (their own rows, captioned "subject photo"): what the samples
should look like sits beside what they look like, in the PNG and in wandb (`side_by_side`)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only

from ..captions import captioned_tiles
from ..io import save_png
from ..models.sampler import to_uint8
from .run_dir import run_dir, wandb_run


def make_grid(images_N3HW: torch.Tensor, ncols: int, captions: list[str] | None = None) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1] -> one uint8 [rows*H', cols*W, 3] image with 2-px gaps; with `captions`,
    each tile has its caption (prompt and seed) printed below it."""
    n = images_N3HW.shape[0]
    tiles = [t.cpu().numpy() for t in to_uint8(images_N3HW)]
    if captions is not None:
        tiles = captioned_tiles(tiles, captions)
    h, w = tiles[0].shape[:2]
    rows = -(-n // ncols)
    gap = 2
    grid = torch.full((rows * (h + gap) - gap, ncols * (w + gap) - gap, 3), 255, dtype=torch.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncols)
        grid[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = torch.from_numpy(tile)
    return grid


class SampleGrid(pl.Callback):
    def __init__(self, every_n_validations: int = 1, ncols: int = 4, on_sanity_check: bool = False):
        self.every_n_validations, self.ncols, self.on_sanity_check = (
            every_n_validations,
            ncols,
            on_sanity_check,
        )
        self._count = 0
        self.last_path: Path | None = None

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking and not self.on_sanity_check:
            return
        self._count += 1
        if (self._count - 1) % self.every_n_validations:
            return
        outputs = getattr(pl_module, "validation_outputs", [])
        if not outputs:
            return
        images = torch.cat([o["images"].float().cpu() for o in outputs])
        prompts = [p for o in outputs for p in o["prompts"]]
        seed = getattr(pl_module, "val_seed", None)
        captions = [p if seed is None else f"{p} | seed {seed}" for p in prompts]
        photos = self._photos(trainer, images.shape[-2:])
        if photos is not None:
            pad = -len(photos) % self.ncols  # the samples start on a row of their own
            blank = torch.ones(pad, *images.shape[1:])
            images_grid = torch.cat([photos, blank, images])
            captions = ["subject photo"] * len(photos) + [""] * pad + captions
        else:
            images_grid = images
        grid = make_grid(images_grid, self.ncols, captions)
        path = run_dir(trainer) / "samples" / f"step{trainer.global_step:06d}.png"
        self.last_path = save_png(path, grid)
        for logger in trainer.loggers:  # TensorBoard: the grid as one image per validation
            if type(logger).__name__ == "TensorBoardLogger":
                logger.experiment.add_image(
                    "val/samples", grid.numpy(), trainer.global_step, dataformats="HWC"
                )
        run = wandb_run(trainer)
        if run is not None:
            import wandb

            run.log(
                {
                    "samples": [
                        wandb.Image(to_uint8(im[None])[0].numpy(), caption=p)
                        for im, p in zip(images, prompts)
                    ],
                    "side_by_side": wandb.Image(grid.numpy(), caption="subject photos, then the samples"),
                    "trainer/global_step": trainer.global_step,
                }
            )

    @staticmethod
    def _photos(trainer: pl.Trainer, size: torch.Size) -> torch.Tensor | None:
        """The un-augmented subject photos at the samples' size, [N, 3, H, W] in [-1, 1] (None without a
        subject data module)."""
        dm = getattr(trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "reference_pixels"):
            return None
        refs = [r.float().cpu() for r in dm.reference_pixels()]
        if not refs:
            return None
        resized = [torch.nn.functional.interpolate(r[None], size=tuple(size), mode="area")[0] for r in refs]
        return torch.stack(resized)
