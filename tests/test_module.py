"""SubjectTuningModule on the tiny preset: freeze masks, prior distillation, scale weights, bank vs online,
resume after a kill, and the adapter round trip."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.helpers import make_subject_photos, trainer
from varlit.data.datamodule import SubjectDataModule
from varlit.models.infinity import is_block_tensor
from varlit.module import OptimConfig, PriorConfig, SubjectTuningModule
from varlit.tuning.freeze import FreezeConfig, TrainableSpec
from varlit.tuning.losses import arbooth_joint_kl, bitwise_ce, scale_weighted_loss
from varlit.tuning.prior_bank import PriorBankConfig, PriorBatch
from varlit.tuning.scale_weights import ScaleWeights


@pytest.fixture(scope="module")
def subject_dir(tmp_path_factory):
    return make_subject_photos(tmp_path_factory.mktemp("subject") / "toy", n=3)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _dm(subject_dir, cache_dir, batch_size: int = 2, repeats: int = 100) -> SubjectDataModule:
    return SubjectDataModule(
        subject_dir=str(subject_dir),
        class_word="toy",
        batch_size=batch_size,
        repeats=repeats,
        cache_dir=str(cache_dir),
    )


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class LossRecorder(pl.Callback):
    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))


def test_exactly_the_masked_tensors_change(tmp_path, subject_dir, cache_dir):
    spec = FreezeConfig(
        preset=None,
        trainable=[TrainableSpec(modules=["ca", "ffn"], blocks="1-2"), TrainableSpec(modules=["head"])],
    )
    m = SubjectTuningModule(preset="tiny", freeze=spec, optim=OptimConfig(lr=1e-3))
    before = _state(m.student)
    vae_before = _state(m.vae)
    dm = _dm(subject_dir, cache_dir)
    trainer(tmp_path, 2).fit(m, dm)
    t5_before = {k: v for k, v in m.text_encoder.encoder.state_dict().items()}
    after = _state(m.student)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(m.mask.trainable)
    assert all(
        k.startswith(("block_chunks.0.module.1.", "block_chunks.1.module.0.", "head.")) for k in changed
    )
    assert m.subject_embedding.vectors.abs().sum() > 0  # trained away from its zero init
    for k, v in _state(m.vae).items():
        assert torch.equal(v, vae_before[k])
    teacher = _state(m.teacher)
    for k, v in teacher.items():
        assert torch.equal(v, before[k]), k  # the teacher is the pretrained model
    frozen = [n for n in before if n not in m.mask.trainable and "zero_k_bias" not in n]
    t_params, s_params = dict(m.teacher.state_dict()), dict(m.student.state_dict())
    assert all(t_params[n].data_ptr() == s_params[n].data_ptr() for n in frozen)  # shared, not copied
    assert not any(p.requires_grad for p in m.teacher.parameters()) and not m.teacher.training
    assert all(torch.equal(v, t5_before[k]) for k, v in m.text_encoder.encoder.state_dict().items())
    opt_params = {id(p) for g in m.optimizers().optimizer.param_groups for p in g["params"]}
    assert not opt_params & {id(p) for p in m.teacher.parameters()}


def test_soft_prior_loss_is_zero_when_student_is_teacher(subject_dir, cache_dir):
    m = SubjectTuningModule(preset="tiny")
    dm = _dm(subject_dir, cache_dir)
    tr = trainer(subject_dir.parent, 0)
    tr.fit(m, dm)  # max_steps=0: wires the data module and builds the cache, trains nothing
    batch = next(iter(dm.train_dataloader()))
    m.student.train()
    gen = torch.Generator().manual_seed(0)
    pb, text = m.prior_batch(batch, gen)
    loss, per_scale = m.prior_loss(pb, text, batch.schedule)
    assert loss.abs() < 1e-6 and per_scale.abs().max() < 1e-6
    m.prior_cfg = PriorConfig(loss="hard")
    hard, _ = m.prior_loss(pb, text, batch.schedule)
    assert hard > 0.1  # CE on the teacher's argmax bits is not zero


def test_overfitting_one_image_drives_the_instance_loss_down(subject_dir, cache_dir):
    m = SubjectTuningModule(preset="tiny", prior=PriorConfig(loss="none"), optim=OptimConfig(lr=1e-2))
    dm = _dm(subject_dir, cache_dir, batch_size=1)
    trainer(subject_dir.parent, 0).fit(m, dm)
    batch = next(iter(dm.train_dataloader()))  # one photo, the same every step
    opt = m.configure_optimizers()
    m.student.train()
    m.student.cfg.cond_drop_rate = 0.0
    losses, per_scale = [], []
    for _ in range(20):
        loss, scales = m.instance_loss(batch, None, self_correct_inputs=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        per_scale.append(scales.detach())
    assert losses[-1] < losses[0] - 0.1, losses
    # the coarse scales (few tokens) are memorised first
    assert per_scale[-1][:2].mean() < 0.5 * per_scale[0][:2].mean(), (per_scale[0], per_scale[-1])


def test_scale_weights_scale_the_per_scale_gradients():
    schedule = [(1, 1), (2, 2), (4, 4)]
    L, d = 21, 4
    logits = torch.randn(2, L, 2 * d)
    bits = torch.randint(0, 2, (2, L, d), dtype=torch.uint8)
    norms = {}
    for name, w in {
        "uniform": ScaleWeights(kind="uniform"),
        "arbooth": ScaleWeights(kind="arbooth", num_coarse=1, coarse=1.0, fine=0.25),
    }.items():
        x = logits.clone().requires_grad_(True)
        loss, _ = scale_weighted_loss(bitwise_ce(x, bits), schedule, w, "per_token")
        loss.backward()
        norms[name] = torch.stack([x.grad[:, a:b].norm() for a, b in ((0, 1), (1, 5), (5, 21))])
    torch.testing.assert_close(norms["arbooth"] / norms["uniform"], torch.tensor([1.0, 0.25, 0.25]))


def test_bank_and_online_give_the_same_loss_for_the_same_teacher_samples(tmp_path, subject_dir, cache_dir):
    bank_cfg = PriorBankConfig(
        root=str(tmp_path / "bank"), num_samples=2, shard_size=2, batch_size=2, logits_dtype="float32"
    )
    m = SubjectTuningModule(preset="tiny", prior=PriorConfig(source="bank", bank=bank_cfg))
    dm = _dm(subject_dir, cache_dir)
    trainer(tmp_path, 0).fit(m, dm)  # builds the bank at fit start
    assert m._bank_store is not None and m._bank_store.status() == "complete"
    stored = m._bank_store.batch([0, 1])
    held = m._bank.batch(torch.tensor([0, 1]))  # the copy the training step reads (on the device)
    for a, b in zip(vars(stored).values(), vars(held).values()):
        assert torch.equal(a, b)
    text = m._class_text.index(stored.prompt_index_B)
    # the bank's shard 0 was drawn with the shard generator; draw online with the same one
    from varlit.tuning.prior_bank import _shard_seed

    online = m.teacher_samples(
        text, dm.class_prompt_batch().schedule, torch.Generator().manual_seed(_shard_seed(0, 0))
    )
    assert torch.equal(online.bits_BLd, stored.bits_BLd)
    schedule = dm.class_prompt_batch().schedule
    a, _ = m.prior_loss(stored, text, schedule)
    b, _ = m.prior_loss(online, text, schedule)
    torch.testing.assert_close(a, b)


def test_resume_after_a_kill_continues_the_same_trajectory(tmp_path, subject_dir, cache_dir):
    def make():
        # one batch per epoch, so a restarted epoch is the same as a continued one
        return SubjectTuningModule(preset="tiny", optim=OptimConfig(lr=1e-3)), _dm(
            subject_dir, cache_dir, batch_size=3, repeats=1
        )

    rec = LossRecorder()
    m, dm = make()
    trainer(tmp_path / "full", 4, callbacks=[rec]).fit(m, dm)

    class Kill(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 2:
                raise RuntimeError("killed")

    ckpt_dir = tmp_path / "ckpt"
    first = LossRecorder()
    m, dm = make()
    with pytest.raises(RuntimeError, match="killed"):
        trainer(
            tmp_path / "a",
            4,
            callbacks=[
                ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=1, save_top_k=0),
                first,
                Kill(),
            ],
            enable_checkpointing=True,
        ).fit(m, dm)
    second = LossRecorder()
    m, dm = make()
    trainer(
        tmp_path / "b",
        4,
        callbacks=[
            ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=1, save_top_k=0),
            second,
        ],
        enable_checkpointing=True,
    ).fit(m, dm, ckpt_path=str(ckpt_dir / "last.ckpt"))
    assert m.global_step == 4
    assert first.losses == pytest.approx(rec.losses[:2], abs=1e-6)
    resumed_at = 4 - len(second.losses)  # the step of the last checkpoint written before the kill
    assert 1 <= resumed_at <= 2
    assert second.losses == pytest.approx(rec.losses[resumed_at:], abs=1e-6)
    ckpt = torch.load(ckpt_dir / "last.ckpt", weights_only=False)
    assert set(ckpt["state_dict"]) == {f"student.{k}" for k in m.mask.trainable} | {
        "subject_embedding.vectors"
    }


def test_adapter_round_trip_gives_identical_logits(tmp_path, subject_dir, cache_dir):
    from varlit.pipeline import Pipeline
    from varlit.tuning.adapter import read_adapter

    m = SubjectTuningModule(
        preset="tiny", freeze=FreezeConfig(preset="late-half"), optim=OptimConfig(lr=1e-3)
    )
    dm = _dm(subject_dir, cache_dir)
    trainer(tmp_path, 2).fit(m, dm)
    path = m.save_adapter(tmp_path / "adapter.safetensors")
    adapter = read_adapter(path)
    assert set(adapter.tensors) == set(m.mask.trainable)
    total = sum(p.numel() for p in m.student.parameters())
    assert sum(t.numel() for t in adapter.tensors.values()) < 0.5 * total  # only the tuned blocks

    pipe = Pipeline.load("tiny", device="cpu", dtype="float32")
    pipe.load_adapter(path)
    batch = next(iter(dm.train_dataloader()))
    prompt = batch.instance_prompts[0]
    text = pipe.encode([prompt])
    m.student.eval()
    with torch.no_grad():
        expected = m.student(
            m.instance_text(batch.instance_text.index([0]), batch.instance_placeholder_B[:1]),
            batch.x_BLd_wo_prefix[:1],
            batch.schedule,
        )
        got = pipe.model(text, batch.x_BLd_wo_prefix[:1], batch.schedule)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    pipe.restore_base()
    fresh = Pipeline.load("tiny", device="cpu", dtype="float32")
    for (k, a), (_, b) in zip(pipe.model.state_dict().items(), fresh.model.state_dict().items()):
        assert torch.equal(a, b), k


def test_invalid_freeze_spec_fails_before_any_model_is_loaded(monkeypatch):
    import varlit.module as module

    def boom(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(module, "load_base", boom)
    with pytest.raises(ValueError, match="block 9 is out of range"):
        SubjectTuningModule(
            preset="tiny",
            freeze=FreezeConfig(preset=None, trainable=[TrainableSpec(modules=["ca"], blocks="9")]),
        )
    with pytest.raises(ValueError, match="unknown"):
        SubjectTuningModule(
            preset="tiny", freeze=FreezeConfig(preset=None, trainable=[TrainableSpec(modules=["attn"])])
        )
    with pytest.raises(ValueError, match="prior.source"):
        SubjectTuningModule(preset="tiny", prior=PriorConfig(source="disk"))


def test_bf16_mixed_with_bf16_frozen_weights_and_checkpointing(tmp_path, subject_dir, cache_dir):
    """The GPU recipe (bf16-mixed, bf16 frozen weights, block checkpointing, prior bank), run on CPU."""
    bank = PriorBankConfig(root=str(tmp_path / "bank"), num_samples=2, shard_size=2, batch_size=2)
    m = SubjectTuningModule(
        preset="tiny",
        frozen_dtype="bfloat16",
        gradient_checkpointing=True,
        prior=PriorConfig(source="bank", bank=bank),
    )
    rec = LossRecorder()
    trainer(tmp_path, 2, callbacks=[rec], precision="bf16-mixed").fit(m, _dm(subject_dir, cache_dir))
    assert len(rec.losses) == 2 and all(torch.isfinite(torch.tensor(rec.losses)))
    # The official policy: fp32 master weights; frozen block tensors bf16; everything outside the blocks fp32.
    for name, p in m.student.named_parameters():
        want = torch.bfloat16 if (is_block_tensor(name) and not p.requires_grad) else torch.float32
        assert p.dtype == want, name
    for name, t in m.teacher.state_dict().items():  # frozen throughout: its tuned copy too
        if t.is_floating_point():
            assert t.dtype == (torch.bfloat16 if is_block_tensor(name) else torch.float32), name


class StepRecorder(pl.Callback):
    """The global step each training batch and each validation starts at."""

    def __init__(self):
        self.train_steps: list[int] = []
        self.val_steps: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.train_steps.append(trainer.global_step)

    def on_validation_start(self, trainer, pl_module):
        self.val_steps.append(trainer.global_step)


def test_alternating_schedule_counts_iterations_not_optimizer_updates(tmp_path, subject_dir, cache_dir):
    """max_steps N runs N iterations of (instance update, prior update): 2N AdamW updates; global_step, the
    validation interval and the per-step seeds all count iterations."""
    m = SubjectTuningModule(preset="tiny", optim=OptimConfig(schedule="alternating"))
    rec = StepRecorder()
    tr = trainer(tmp_path, 3, callbacks=[rec], val_check_interval=2, limit_val_batches=1)
    tr.fit(m, _dm(subject_dir, cache_dir))
    assert rec.train_steps == [0, 1, 2]  # the step every seed of an iteration derives from
    assert tr.global_step == 3
    assert rec.val_steps == [2]  # validation grids are named after this step
    opt = tr.optimizers[0]
    tuned = next(p for n, p in m.student.named_parameters() if p.requires_grad)
    assert int(opt.state[tuned]["step"]) == 6


def test_tuned_dtype_bfloat16_updates_the_bf16_weights_directly(tmp_path, subject_dir, cache_dir):
    """The release's recipe: tuned CA/FFN stored in bf16, AdamW on them with no fp32 master copy, so at the
    paper's lr most updates round away; float32 (the default) moves every weight."""
    assert SubjectTuningModule(preset="tiny", arbooth_compat=True).precision_dtypes() == (
        torch.float32,
        torch.bfloat16,
    )
    compat_fp32 = SubjectTuningModule(preset="tiny", arbooth_compat=True, tuned_dtype="float32")
    assert compat_fp32.precision_dtypes() == (torch.float32, torch.float32)
    unchanged = {}
    for dtype in ("bfloat16", "float32"):
        m = SubjectTuningModule(
            preset="tiny", tuned_dtype=dtype, prior=PriorConfig(loss="none"), optim=OptimConfig(lr=6e-3 / 256)
        )
        weights = [n for n in m.mask.trainable if n.endswith(".weight")]
        # as stored once cast (the cast itself rounds a float32 init to bf16)
        stored = getattr(torch, dtype)
        before = {
            n: p.detach().to(stored).float().clone() for n, p in m.student.named_parameters() if n in weights
        }
        tr = trainer(tmp_path / dtype, 2)
        tr.fit(m, _dm(subject_dir, cache_dir))
        params = dict(m.student.named_parameters())
        for n in m.mask.trainable:
            assert params[n].dtype == getattr(torch, dtype), n
            assert tr.optimizers[0].state[params[n]]["exp_avg"].dtype == getattr(torch, dtype), n
        assert all(p.dtype == torch.float32 for n, p in params.items() if not is_block_tensor(n))
        same = sum(int((params[n].detach().float() == before[n]).sum()) for n in weights)
        unchanged[dtype] = same / sum(before[n].numel() for n in weights)
    assert unchanged["bfloat16"] > 0.5, unchanged
    assert unchanged["float32"] < 0.05, unchanged


def test_arbooth_compat_uses_the_configured_prior_temperature(subject_dir, cache_dir):
    m = SubjectTuningModule(preset="tiny", arbooth_compat=True, prior=PriorConfig(temperature=2.0))
    dm = _dm(subject_dir, cache_dir)
    trainer(subject_dir.parent, 0).fit(m, dm)
    batch = next(iter(dm.train_dataloader()))
    m.student.eval()
    pb, text = m.prior_batch(batch, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    pb = PriorBatch(
        pb.prompt_index_B, pb.bits_BLd, pb.x_BLd_wo_prefix, torch.randn(pb.logits_BLV.shape, generator=g)
    )
    loss, _ = m.prior_loss(pb, text, batch.schedule)
    with torch.no_grad():
        logits = m.student(text, pb.x_BLd_wo_prefix, batch.schedule, drop_condition=False)
    expected = {
        t: scale_weighted_loss(arbooth_joint_kl(logits, pb.logits_BLV, t), batch.schedule, None, "per_token")[
            0
        ]
        for t in (1.0, 2.0)
    }
    assert float(loss.detach()) == pytest.approx(float(expected[2.0]), rel=1e-5)
    assert abs(float(expected[2.0]) - float(expected[1.0])) > 1e-3
