"""The pretraining objectives, term by term: each test fails if its term is dropped or mis-wired.

The VAE's commitment term, the transformer's text-condition dropout, the judge's augmentation and the
quantiser's detached residual each survived the whole suite as single-point changes before these tests.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from varlit.models.presets import WORLD_DIR, get_preset
from varlit.models.quantizer import _resize, encode_code, quantize_scale, upsample_code
from varlit.models.vae import BSQVAE
from varlit.world.scenes import pretraining_sample


def _batch(n: int, seed: int = 7, captions: list[str] | None = None) -> dict:
    from varlit.pretrain.data import to_unit_range

    samples = [pretraining_sample(seed, i) for i in range(n)]
    return {
        "pixels": to_unit_range(np.stack([s[2] for s in samples])),
        "captions": captions or [s[1] for s in samples],
    }


def _quiet(module, monkeypatch) -> None:
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    monkeypatch.setattr(module, "log_dict", lambda *a, **k: None)


# ----------------------------------------------------------------------------------------------------
# VAE: the commitment term beta |z - sg(code)|^2


def test_vae_loss_is_the_commitment_term_when_it_is_the_only_one(monkeypatch):
    from varlit.pretrain.vae_module import VAEPretrainModule

    module = VAEPretrainModule(
        preset="world", l1_weight=0.0, l2_weight=0.0, entropy_weight=0.0, commit_weight=1.0
    )
    _quiet(module, monkeypatch)
    batch = _batch(4)
    loss = module.training_step(batch, 0)
    with torch.no_grad():
        z = module.vae.encode_raw(batch["pixels"])
        expected = (z - encode_code(z, module.vae_schedule)).pow(2).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(expected) > 0
    loss.backward()
    # the commitment term trains the encoder towards its codes and leaves the decoder alone
    assert module.vae.encoder.conv_in.conv.weight.grad.abs().sum() > 0
    assert (
        module.vae.decoder.conv_in.conv.weight.grad is None
        or not module.vae.decoder.conv_in.conv.weight.grad.any()
    )


def test_vae_commitment_weight_scales_its_term(monkeypatch):
    from varlit.pretrain.vae_module import VAEPretrainModule

    batch = _batch(4)
    losses = {}
    for beta in (0.0, 0.25, 1.0):
        module = VAEPretrainModule(preset="world", commit_weight=beta, entropy_weight=0.0)
        _quiet(module, monkeypatch)
        losses[beta] = float(module.training_step(batch, 0).detach())
    commit = losses[1.0] - losses[0.0]
    assert commit > 0
    assert losses[0.25] - losses[0.0] == pytest.approx(0.25 * commit, rel=1e-4)


# ----------------------------------------------------------------------------------------------------
# Transformer: text-condition dropout (what makes classifier-free guidance possible)


@pytest.fixture(scope="module")
def random_world_vae(tmp_path_factory) -> str:
    torch.manual_seed(0)
    vae = BSQVAE(get_preset("world").vae)
    path = tmp_path_factory.mktemp("vae") / "vae.safetensors"
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(path))
    return str(path)


def _transformer(vae: str, rate: float, monkeypatch):
    from varlit.pretrain.infinity_module import InfinityPretrainModule

    module = InfinityPretrainModule(
        preset="world", vae_weights=vae, text_encoder=str(WORLD_DIR / "text_encoder"), cond_drop_rate=rate
    )
    module.sc_cfg.enabled = False
    _quiet(module, monkeypatch)
    return module


def _loss(module, batch: dict) -> float:
    torch.manual_seed(3)
    with torch.no_grad():
        return float(module.training_step(batch, 0))


def _swap_class(caption: str) -> str:
    from varlit.world.scenes import CLASSES

    words = caption.split()
    return " ".join(CLASSES[(CLASSES.index(w) + 1) % len(CLASSES)] if w in CLASSES else w for w in words)


def test_condition_dropout_rate_reaches_the_model(random_world_vae, monkeypatch):
    assert _transformer(random_world_vae, 0.3, monkeypatch).model.cfg.cond_drop_rate == 0.3
    stage = yaml.safe_load(open("experiments/world/infinity.yaml"))
    assert stage["model"]["cond_drop_rate"] == pytest.approx(0.1)  # the shipped world's recipe


def test_training_step_drops_the_text_condition(random_world_vae, monkeypatch):
    pixels_batch = _batch(8)
    # the same images under other class words (one token each: the masks and lengths stay the same)
    swapped = [_swap_class(c) for c in pixels_batch["captions"]]
    assert swapped != pixels_batch["captions"]
    other_captions = dict(pixels_batch, captions=swapped)
    always = _transformer(random_world_vae, 1.0, monkeypatch)
    torch.nn.init.normal_(always.model.cfg_uncond, std=0.5)  # the null prompt differs from every caption
    assert _loss(always, pixels_batch) == _loss(always, other_captions)  # every prompt became the null one
    never = _transformer(random_world_vae, 0.0, monkeypatch)
    never.model.load_state_dict(always.model.state_dict())
    assert _loss(never, pixels_batch) != _loss(never, other_captions)
    # validation never drops the condition, whatever the rate
    with torch.no_grad():
        val_a = always._step(pixels_batch, train=False)[0]
        val_b = always._step(other_captions, train=False)[0]
    assert float(val_a) != float(val_b)


# ----------------------------------------------------------------------------------------------------
# Judge: trained on augmented images


def test_judge_trains_on_augmented_images_only(tmp_path, monkeypatch):
    from varlit.world import judge as judge_mod
    from varlit.world.pool import cached_pool

    seen: list[torch.Tensor] = []
    original = judge_mod.Judge.forward

    def recording_forward(self, x_B3HW):
        if self.training:
            seen.append(x_B3HW.detach().clone())
        return original(self, x_B3HW)

    monkeypatch.setattr(judge_mod.Judge, "forward", recording_forward)
    cache = tmp_path / "cache"
    judge_mod.train_judge(
        out=str(tmp_path / "judge"), num_images=16, steps=3, batch_size=8, eval_images=8, cache_dir=str(cache)
    )
    assert len(seen) == 3
    pool = judge_mod._pixels(cached_pool(str(cache), 16, 2000, 0.35), torch.arange(16))
    for x in seen:
        # distance of every training image to its nearest clean pool image: a raw pool image would be 0
        nearest = (x[:, None] - pool[None]).abs().flatten(2).amax(-1).amin(1)
        assert (nearest > 0.02).all()


def test_augment_is_seeded_and_stays_in_range():
    from varlit.world.judge import augment

    x = torch.rand(6, 3, 64, 64) * 2 - 1
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    c = augment(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1 and not torch.allclose(a, x, atol=0.02)


# ----------------------------------------------------------------------------------------------------
# Quantiser: the residual subtracts a detached code (the official default)


def test_encoder_gradient_sees_each_scale_through_its_own_code_only():
    sched = [(1, 1), (2, 2), (4, 4), (8, 8)]
    torch.manual_seed(0)
    z = torch.randn(2, 8, 8, 8, requires_grad=True)
    w = torch.randn(2, 8, 8, 8)
    (encode_code(z, sched) * w).sum().backward()
    # reference: scale s quantises z minus the *constant* codes of the scales before it
    z_ref = z.detach().clone().requires_grad_(True)
    before = torch.zeros_like(z_ref).unsqueeze(2)
    total = torch.zeros_like(before)
    for hw in sched:
        up = upsample_code(quantize_scale(_resize(z_ref.unsqueeze(2) - before, hw, "area")), (8, 8))
        before = before + up.detach()
        total = total + up
    (total.squeeze(2) * w).sum().backward()
    assert torch.allclose(z.grad, z_ref.grad, atol=1e-6)
    # and it is not the undetached gradient
    z_und = z.detach().clone().requires_grad_(True)
    residual, total = z_und.unsqueeze(2), 0
    for hw in sched:
        up = upsample_code(quantize_scale(_resize(residual, hw, "area")), (8, 8))
        residual, total = residual - up, total + up
    (total.squeeze(2) * w).sum().backward()
    assert not torch.allclose(z.grad, z_und.grad, atol=1e-3)
