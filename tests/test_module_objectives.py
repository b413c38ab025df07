"""What the training step optimises, checked through SubjectTuningModule on the tiny preset with synthetic
batches (no Trainer unless the path needs one): which text the prior pass uses, which bits the hard prior
loss targets, the prior weight, learning rates, clipping, reductions and the ARBooth-compatible choices.

Each test here kills a mutant that survived the rest of the suite (see issue 15)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import make_subject_photos, trainer
from varlit.data.batches import SubjectBatch
from varlit.data.datamodule import SubjectDataModule
from varlit.models.quantizer import multiscale_quantize
from varlit.models.text import TextBatch
from varlit.module import OptimConfig, PriorConfig, SubjectConfig, SubjectTuningModule
from varlit.tuning.prior_bank import PriorBatch
from varlit.tuning.scale_weights import ScaleWeights
from varlit.tuning.self_correction import SelfCorrectionConfig

NO_FLIPS = SelfCorrectionConfig(enabled=False)


def _module(**kw) -> SubjectTuningModule:
    """On CPU in float32 the module is ready as built (nothing to cast or move)."""
    return SubjectTuningModule(preset="tiny", **kw)


def _batch(m: SubjectTuningModule, B: int = 2, seed: int = 0) -> SubjectBatch:
    """A synthetic batch whose instance and class texts differ in content and length."""
    p = m.preset
    schedule = p.schedule(1.0, "0.06M")
    vae_schedule = p.vae_schedule(schedule)
    g = torch.Generator().manual_seed(seed)
    H, W = vae_schedule[-1]
    z = torch.randn(B, p.vae.codebook_dim, H, W, generator=g)
    q = multiscale_quantize(z, vae_schedule, p.patchify)
    Ct = p.infinity.text_channels
    inst = TextBatch(torch.randn(B, 9, Ct, generator=g) * 0.3, torch.full((B,), 9))
    cls = TextBatch(torch.randn(B, 5, Ct, generator=g) * 0.3, torch.full((B,), 5))
    return SubjectBatch(
        pixels_B3HW=torch.zeros(B, 3, H * p.vae.patch_size, W * p.vae.patch_size),
        z_BdHW=z,
        bits_BLd=q.bits_BLd,
        x_BLd_wo_prefix=q.x_BLd_wo_prefix,
        instance_text=inst,
        instance_placeholder_B=torch.full((B,), 2),
        class_text=cls,
        instance_prompts=["a <placeholder> toy"] * B,
        class_prompts=["a photo of toy"] * B,
        schedule=schedule,
        vae_schedule=vae_schedule,
    )


def _perturb_student(m: SubjectTuningModule, scale: float = 0.05) -> None:
    """Move the tuned tensors off the teacher's (pretrained) values, so the prior loss has a gradient."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for n, p in m.student.named_parameters():
            if n in m.mask.trainable:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def _trainable(m: SubjectTuningModule) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}


def _sgd_step(m: SubjectTuningModule, batch: SubjectBatch, lr: float = 1.0) -> dict[str, torch.Tensor]:
    """One training step with plain SGD (update = -lr * gradient); returns the update of every tensor."""
    before = _trainable(m)
    m._standalone_optimizer = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=lr)
    torch.manual_seed(0)
    m.training_step_for_bench(batch)
    after = _trainable(m)
    return {n: after[n] - before[n] for n in before}


def _flat(update: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.flatten() for _, v in sorted(update.items())])


class _Recorder:
    """Records the text of every student forward and of every teacher text encoding."""

    def __init__(self, m: SubjectTuningModule):
        self.student: list[TextBatch] = []
        self.teacher: list[TextBatch] = []
        m.student.register_forward_pre_hook(lambda mod, args: self.student.append(args[0]))
        teacher = m.teacher
        encode = teacher.encode_text

        def recording_encode(text):
            self.teacher.append(text)
            return encode(text)

        teacher.encode_text = recording_encode


def _same_text(a: TextBatch, b: TextBatch) -> bool:
    a, b = a.trimmed(), b.trimmed()
    return torch.equal(a.lengths_B, b.lengths_B) and torch.equal(a.features_BTC, b.features_BTC)


# ---- the prior pass ---------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["joint", "alternating"])
def test_prior_pass_uses_the_class_prompt_for_teacher_and_student(schedule):
    """Teacher samples and the student's forcing on them both read the class prompt, never the instance one."""
    m = _module(optim=OptimConfig(schedule=schedule))
    batch = _batch(m)
    rec = _Recorder(m)
    with torch.no_grad():
        spliced = m.instance_text(batch.instance_text, batch.instance_placeholder_B)  # before the step
    torch.manual_seed(0)
    m.training_step_for_bench(batch)
    assert len(rec.teacher) == 1 and _same_text(rec.teacher[0], batch.class_text)
    assert len(rec.student) == 2
    assert _same_text(rec.student[0], spliced)  # the instance pass, subject vectors spliced in
    assert _same_text(rec.student[1], batch.class_text)  # the prior pass


def test_prior_batch_size_sets_the_number_of_teacher_samples():
    m = _module(prior=PriorConfig(batch_size=3))
    batch = _batch(m, B=2)
    rec = _Recorder(m)
    torch.manual_seed(0)
    m.training_step_for_bench(batch)
    assert rec.teacher[0].batch_size == 3 and rec.student[1].batch_size == 3
    want = TextBatch.cat([batch.class_text, batch.class_text]).index(slice(0, 3))
    assert _same_text(rec.teacher[0], want) and _same_text(rec.student[1], want)
    assert rec.student[0].batch_size == 2  # the instance pass keeps the data batch


def test_hard_prior_loss_targets_the_teacher_argmax_not_its_sampled_bits():
    m = _module(prior=PriorConfig(loss="hard"))
    m.student.eval()
    batch = _batch(m)
    g = torch.Generator().manual_seed(3)
    pb = m.teacher_samples(batch.class_text, batch.schedule, g)
    argmax = pb.logits_BLV.view(*pb.bits_BLd.shape, 2).argmax(-1).to(torch.uint8)
    assert not torch.equal(pb.bits_BLd, argmax)  # top-k 900 / top-p 0.97 sampling: some bits differ
    opposite = PriorBatch(pb.prompt_index_B, 1 - argmax, pb.x_BLd_wo_prefix, pb.logits_BLV)
    with torch.no_grad():
        loss, _ = m.prior_loss(pb, batch.class_text, batch.schedule)
        loss_opposite, _ = m.prior_loss(opposite, batch.class_text, batch.schedule)
        logits = m.student(batch.class_text, pb.x_BLd_wo_prefix, batch.schedule, drop_condition=False)
    # the stored bits do not matter: the target is the argmax of the teacher's logits
    torch.testing.assert_close(loss, loss_opposite)
    logp = F.log_softmax(logits.float().view(*argmax.shape, 2), -1)
    ce = -logp.gather(-1, argmax.long()[..., None]).squeeze(-1).mean()  # uniform weights, per token
    torch.testing.assert_close(loss, ce)


@pytest.mark.parametrize("schedule", ["joint", "alternating"])
def test_prior_weight_scales_the_prior_update(schedule):
    """With SGD the update is -lr (g_inst + lambda g_prior): the part beyond the instance-only update is
    proportional to lambda (in `alternating` the prior step follows the same instance step)."""
    updates = {}
    for lam in (None, 0.5, 1.0):
        m = _module(
            prior=PriorConfig(loss="none") if lam is None else PriorConfig(weight=lam),
            optim=OptimConfig(schedule=schedule),
            self_correction=NO_FLIPS,
        )
        _perturb_student(m)
        updates[lam] = _flat(_sgd_step(m, _batch(m, B=1), lr=0.1))
    prior_half, prior_one = updates[0.5] - updates[None], updates[1.0] - updates[None]
    assert prior_half.norm() > 1e-3 * updates[None].norm()
    torch.testing.assert_close(prior_one, 2 * prior_half, atol=1e-6, rtol=1e-3)


def test_alternating_takes_two_optimizer_steps_and_joint_one():
    steps = {}
    for schedule in ("joint", "alternating"):
        m = _module(optim=OptimConfig(schedule=schedule))
        opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
        calls = []
        step = opt.step
        opt.step = lambda *a, _s=step, _c=calls: (_c.append(1), _s(*a))[1]
        m._standalone_optimizer = opt
        torch.manual_seed(0)
        m.training_step_for_bench(_batch(m))
        steps[schedule] = len(calls)
    assert steps == {"joint": 1, "alternating": 2}


def test_arbooth_compat_uses_the_joint_softmax_kl_and_alternating_steps():
    m = _module(arbooth_compat=True)
    assert m.optim_cfg.schedule == "alternating"
    _perturb_student(m)
    m.student.eval()
    batch = _batch(m)
    pb = m.teacher_samples(batch.class_text, batch.schedule, torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss, _ = m.prior_loss(pb, batch.class_text, batch.schedule)
        s = m.student(batch.class_text, pb.x_BLd_wo_prefix, batch.schedule, drop_condition=False).float()
    # KL(teacher || student) of one softmax over all 2d logits of a token, mean over tokens and batch
    log_p, log_q = F.log_softmax(pb.logits_BLV.float(), -1), F.log_softmax(s, -1)
    want = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    torch.testing.assert_close(loss, want)
    per_bit = _module()
    per_bit.student.load_state_dict(m.student.state_dict())
    per_bit.student.eval()
    with torch.no_grad():
        other, _ = per_bit.prior_loss(pb, batch.class_text, batch.schedule)
    assert not torch.allclose(other, loss)  # the default per-bit KL is a different quantity


# ---- optimisation knobs -----------------------------------------------------------------------------


def test_subject_embedding_has_its_own_learning_rate():
    m = _module(
        embedding=SubjectConfig(lr=0.2),
        optim=OptimConfig(lr=1e-4, weight_decay=0.0),
        self_correction=NO_FLIPS,
    )
    groups = {g["name"]: g for g in m.configure_optimizers().param_groups}
    assert groups["subject"]["lr"] == 0.2 and groups["model"]["lr"] == 1e-4
    before = _trainable(m)
    torch.manual_seed(0)
    m.training_step_for_bench(_batch(m))  # AdamW: the first step moves every element by about its lr
    after = _trainable(m)
    moved = {n: (after[n] - before[n]).abs().max().item() for n in before}
    assert 0.1 < moved["subject_embedding.vectors"] <= 0.2 + 1e-6
    assert max(v for n, v in moved.items() if n.startswith("student.")) <= 1e-4 + 1e-7


def test_grad_clip_bounds_the_update_norm_without_a_trainer():
    m = _module(optim=OptimConfig(grad_clip=1e-3), self_correction=NO_FLIPS)
    update = _flat(_sgd_step(m, _batch(m), lr=1.0))
    torch.testing.assert_close(update.norm(), torch.tensor(1e-3), rtol=1e-3, atol=0)
    free = _module(self_correction=NO_FLIPS)
    assert _flat(_sgd_step(free, _batch(free), lr=1.0)).norm() > 1e-2  # the unclipped gradient is larger


def test_per_scale_mean_reduction_weights_the_scale_means():
    weights = ScaleWeights(kind="arbooth", num_coarse=2, coarse=1.0, fine=0.25)
    m = _module(loss_reduction="per_scale_mean", scale_weights=weights, self_correction=NO_FLIPS)
    m.student.eval()
    batch = _batch(m)
    with torch.no_grad():
        loss, per_scale = m.instance_loss(batch, None, self_correct_inputs=False)
        text = m.instance_text(batch.instance_text, batch.instance_placeholder_B)
        logits = m.student(text, batch.x_BLd_wo_prefix, batch.schedule).float()
    logp = F.log_softmax(logits.view(*batch.bits_BLd.shape, 2), -1)
    per_tok = -logp.gather(-1, batch.bits_BLd.long()[..., None]).squeeze(-1).mean(-1)  # [B, L]
    means, start = [], 0
    for h, w in batch.schedule:
        means.append(per_tok[:, start : start + h * w].mean())
        start += h * w
    means = torch.stack(means)
    w = torch.tensor([1.0, 1.0] + [0.25] * (len(means) - 2))
    torch.testing.assert_close(per_scale, means)
    torch.testing.assert_close(loss, (w * means).sum() / w.sum())
    per_token = _module(scale_weights=weights, self_correction=NO_FLIPS)
    per_token.student.load_state_dict(m.student.state_dict())
    per_token.student.eval()
    with torch.no_grad():
        other, _ = per_token.instance_loss(batch, None, self_correct_inputs=False)
    assert not torch.allclose(other, loss)


# ---- through a Trainer ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def subject_dir(tmp_path_factory):
    return make_subject_photos(tmp_path_factory.mktemp("subject") / "toy", n=3)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _dm(subject_dir, cache_dir, batch_size: int = 2) -> SubjectDataModule:
    return SubjectDataModule(
        subject_dir=str(subject_dir), class_word="toy", batch_size=batch_size, cache_dir=str(cache_dir)
    )


def test_embedding_init_class_starts_at_the_class_word_features(tmp_path, subject_dir, cache_dir):
    m = SubjectTuningModule(preset="tiny", embedding=SubjectConfig(init="class", num_vectors=3))
    trainer(tmp_path, 0).fit(m, _dm(subject_dir, cache_dir))  # max_steps 0: fit start only
    feats = m.text_encoder.encode(["toy"])
    n = int(feats.lengths_B[0]) - 1  # without the end-of-sequence row
    want = feats.features_BTC[0, :n].float().mean(0)
    assert want.abs().sum() > 0
    for row in m.subject_embedding.vectors:
        torch.testing.assert_close(row, want)


def test_grad_clip_through_the_trainer(tmp_path, subject_dir, cache_dir):
    m = SubjectTuningModule(preset="tiny", optim=OptimConfig(grad_clip=1e-3), self_correction=NO_FLIPS)
    # SGD with lr 1 makes the update the clipped gradient itself (AdamW would hide its size)
    m.configure_optimizers = lambda: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1.0)
    before = _trainable(m)
    trainer(tmp_path, 1).fit(m, _dm(subject_dir, cache_dir))
    after = _trainable(m)
    update = _flat({n: after[n] - before[n] for n in before})
    torch.testing.assert_close(update.norm(), torch.tensor(1e-3), rtol=1e-3, atol=0)


def test_validation_metrics_score_clip_t_on_text_without_the_placeholder(tmp_path, subject_dir, cache_dir):
    """The metrics callback path: CLIP-T reads the prompt without `<placeholder>`; PRES samples exist."""
    from varlit.callbacks.metrics import SubjectMetricsCallback
    from varlit.eval import ClipBackbone, DinoBackbone, SubjectMetrics

    metrics = SubjectMetrics(
        DinoBackbone.from_pretrained("tiny-dino"), ClipBackbone.from_pretrained("tiny-clip")
    )
    cb = SubjectMetricsCallback(metrics=metrics, lpips=False)
    m = SubjectTuningModule(preset="tiny", val_class_samples=2)
    dm = _dm(subject_dir, cache_dir)
    trainer(tmp_path, 1, callbacks=[cb], limit_val_batches=1, val_check_interval=1).fit(m, dm)
    samples = m.generate_validation_samples()
    assert samples.prompts and all("<placeholder>" in p for p in samples.prompts)
    assert samples.texts == [" ".join(p.replace("<placeholder>", " ").split()) for p in samples.prompts]
    assert samples.class_images is not None and samples.class_images.shape[0] == 2
    assert samples.images.shape[0] == len(samples.prompts)
    scores = cb.last_scores
    assert scores is not None and scores.pres is not None
    for ps in scores.prompts:
        assert "<placeholder>" not in ps.text and "<placeholder>" in ps.prompt
    # the logged CLIP-T is the one computed against the placeholder-free texts
    torch.testing.assert_close(scores.clip_t, metrics.score(samples).clip_t)
    # which prompt drew which sample: each prompt's CLIP-T is over exactly the images of that prompt,
    # against that prompt's own text (by hand: cosine of normalised features, averaged)
    assert sorted(ps.prompt for ps in scores.prompts) == sorted(set(samples.prompts))
    img = torch.nn.functional.normalize(metrics.clip_image_features(samples.images), dim=-1)
    for ps in scores.prompts:
        idx = [i for i, p in enumerate(samples.prompts) if p == ps.prompt]
        assert ps.num_images == len(idx) >= 1
        assert ps.text == samples.texts[idx[0]]
        txt = torch.nn.functional.normalize(metrics.clip_text_features([ps.text]), dim=-1)
        torch.testing.assert_close(ps.clip_t, (img[idx] @ txt[0]).mean(), rtol=1e-4, atol=1e-5)
    # PRES: the photos against the bare class prompt's samples (not the subject prompts' images)
    torch.testing.assert_close(scores.pres, metrics.pres(samples.reference, samples.class_images))
    assert not torch.allclose(scores.pres, metrics.pres(samples.reference, samples.images[:2]))


def test_bf16_recipe_tracks_the_float32_run(tmp_path, subject_dir, cache_dir):
    """bf16-mixed with bf16 frozen weights and block checkpointing computes the same training as float32:
    the same losses to bf16 precision and updates in the same directions (not merely finite numbers)."""
    import lightning.pytorch as pl

    class Losses(pl.Callback):
        def __init__(self):
            self.values: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.values.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))

    runs = {}
    for name, extra, precision in (
        ("fp32", {}, "32-true"),
        ("bf16", {"frozen_dtype": "bfloat16", "gradient_checkpointing": True}, "bf16-mixed"),
    ):
        m = SubjectTuningModule(
            preset="tiny", prior=PriorConfig(loss="none"), optim=OptimConfig(lr=1e-3), **extra
        )
        before, rec = _trainable(m), Losses()
        trainer(tmp_path / name, 2, callbacks=[rec], precision=precision).fit(m, _dm(subject_dir, cache_dir))
        after = _trainable(m)
        runs[name] = (rec.values, _flat({n: after[n] - before[n] for n in before}))
    (loss32, upd32), (loss16, upd16) = runs["fp32"], runs["bf16"]
    assert len(loss16) == 2 and all(torch.isfinite(torch.tensor(loss16)))
    for a, b in zip(loss32, loss16):
        assert abs(a - b) <= 2e-2 * abs(a), (loss32, loss16)
    moved = upd32.abs() > 1e-4  # AdamW moves an element by about lr per step
    agree = (upd32.sign() == upd16.sign())[moved].float().mean().item()
    assert moved.float().mean() > 0.5 and agree > 0.9, agree
    assert torch.nn.functional.cosine_similarity(upd32, upd16, dim=0) > 0.9
