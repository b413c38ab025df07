"""Test helpers: synthetic subject photos and a small trainer factory (CPU, no logger, tmp dirs)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from PIL import Image, ImageDraw


def make_subject_photos(folder: Path, n: int = 3, size: int = 256, seed: int = 0) -> Path:
    """n photos of the same red 'toy' on varied backgrounds (deterministic)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        bg = ((40 * i + 60 + seed) % 256, 180, (220 - 30 * i) % 256)
        im = Image.new("RGB", (size, size), bg)
        d = ImageDraw.Draw(im)
        o = 20 * i
        d.ellipse([size // 4 + o, size // 4, 3 * size // 4 + o // 2, 3 * size // 4], fill=(210, 40, 30))
        d.rectangle([size // 3 + o, size // 2, size // 2 + o, 7 * size // 8], fill=(30, 30, 160))
        im.save(folder / f"{i:02d}.png")
    return folder


def trainer(root: Path, max_steps: int, callbacks=None, **kw) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=kw.pop("enable_checkpointing", False),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=kw.pop("limit_val_batches", 0),
        default_root_dir=str(root),
        callbacks=callbacks or [],
        **kw,
    )


# The parity cases and release manifests ship with the repository, so a plain clone runs the parity tests.
VENDORED_PARITY_DIR = Path(__file__).resolve().parent / "fixtures" / "parity"


def parity_dir() -> Path:
    """`$VARLIT_PARITY_DIR` when set (other case folders), else the vendored tests/fixtures/parity."""
    import os

    env = os.environ.get("VARLIT_PARITY_DIR")
    return Path(env) if env else VENDORED_PARITY_DIR


class BatchPathRecorder(pl.Callback):
    """Writes the photos of every training batch of this rank to `<folder>/rank<r>.txt`, one batch a line
    (for subprocess runs, e.g. DDP through the CLI: `--trainer.callbacks+=tests.helpers.BatchPathRecorder`)."""

    def __init__(self, folder: str):
        self.folder = Path(folder)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.folder.mkdir(parents=True, exist_ok=True)
        names = " ".join(Path(p).name for p in batch.paths)
        with open(self.folder / f"rank{trainer.global_rank}.txt", "a") as f:
            f.write(f"{trainer.global_step} {names}\n")


class SigintAt(pl.Callback):
    """Sends this process a SIGINT (a Ctrl-C) after training step `step` (`--trainer.callbacks+=...`)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import os
        import signal

        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


class PoisonTrainable(pl.Callback):
    """Writes NaN into the first trainable tensor before training step `step`: the next loss is NaN (pins the
    loss check's wiring: the gradient check would otherwise catch it one backward later)."""

    def __init__(self, step: int = 0):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        import torch

        if trainer.global_step == self.step:
            name = sorted(pl_module.mask.trainable)[0]
            with torch.no_grad():
                dict(pl_module.student.named_parameters())[name].fill_(float("nan"))
