"""Resume reproduces: a run killed mid-epoch and resumed from last.ckpt ends with the uninterrupted run's adapter,
bit for bit (several batches per epoch, so the data order matters)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.helpers import make_subject_photos, trainer
from varlit.data.datamodule import SubjectDataModule
from varlit.module import OptimConfig, SubjectTuningModule

STEPS, KILL_AT = 4, 2


class _Kill(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == KILL_AT:  # after step KILL_AT's checkpoint, before the next step
            raise RuntimeError("killed")


class _Paths(pl.Callback):
    """The photos of every training batch, in order."""

    def __init__(self):
        self.paths: list[list[str]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.paths.append(list(batch.paths))


def _make(subject_dir, cache_dir):
    # 3 photos, batch 1, repeats 2: 6 batches per epoch, so the kill at step 2 is mid-epoch
    module = SubjectTuningModule(preset="tiny", optim=OptimConfig(lr=1e-2))
    dm = SubjectDataModule(
        subject_dir=str(subject_dir), class_word="toy", batch_size=1, repeats=2, cache_dir=str(cache_dir)
    )
    return module, dm


def _adapter(module: SubjectTuningModule) -> dict[str, torch.Tensor]:
    out = {k: v.detach().clone() for k, v in module.adapter_tensors().items()}
    out["subject"] = module.subject_embedding.vectors.detach().clone()
    return out


def test_resume_after_a_mid_epoch_kill_ends_bitwise_equal_to_the_uninterrupted_run(tmp_path):
    subject_dir = make_subject_photos(tmp_path / "toy", n=3)
    cache_dir = tmp_path / "cache"
    full_paths = _Paths()
    m, dm = _make(subject_dir, cache_dir)
    trainer(tmp_path / "full", STEPS, callbacks=[full_paths]).fit(m, dm)
    uninterrupted = _adapter(m)
    assert len({tuple(p) for p in full_paths.paths}) > 1  # the batches differ: order is visible

    ckpt_dir = tmp_path / "ckpt"

    def ckpt():
        return ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=1, save_top_k=0)

    m, dm = _make(subject_dir, cache_dir)
    with pytest.raises(RuntimeError, match="killed"):
        trainer(tmp_path / "a", STEPS, callbacks=[ckpt(), _Kill()], enable_checkpointing=True).fit(m, dm)
    saved = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    assert saved["global_step"] == KILL_AT
    state = next(v for k, v in saved.items() if k.endswith("SubjectDataModule"))
    assert state["batches_consumed"] == KILL_AT  # the data position travels with the checkpoint

    resumed_paths = _Paths()
    m, dm = _make(subject_dir, cache_dir)
    trainer(tmp_path / "b", STEPS, callbacks=[ckpt(), resumed_paths], enable_checkpointing=True).fit(
        m, dm, ckpt_path=str(ckpt_dir / "last.ckpt")
    )
    assert m.global_step == STEPS
    assert resumed_paths.paths == full_paths.paths[KILL_AT:]
    resumed = _adapter(m)
    assert resumed.keys() == uninterrupted.keys()
    for name, value in uninterrupted.items():
        assert torch.equal(resumed[name], value), name
