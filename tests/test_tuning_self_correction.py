"""Bitwise self-correction: off equals the plain quantiser; flips happen at the drawn rate; labels stay clean."""

from __future__ import annotations

import pytest
import torch

from varlit.models.quantizer import multiscale_quantize
from varlit.tuning.self_correction import SelfCorrectionConfig, draw_flip_probs, self_correct

SCHED = [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8)]


def _z(B: int, d: int, hw: tuple[int, int], seed: int) -> torch.Tensor:
    return torch.randn(B, d, *hw, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "cfg",
    [
        SelfCorrectionConfig(max_p=0.0),
        SelfCorrectionConfig(enabled=False),
        SelfCorrectionConfig(num_scales=0),
    ],
)
def test_off_equals_the_plain_quantiser(cfg: SelfCorrectionConfig) -> None:
    z = _z(2, 16, (8, 8), 0)
    gen = torch.Generator().manual_seed(1)
    state = gen.get_state()
    got = self_correct(z, SCHED, cfg, gen)
    plain = multiscale_quantize(z, SCHED)
    assert torch.equal(got.bits_BLd, plain.bits_BLd)
    assert torch.equal(got.x_BLd_wo_prefix, plain.x_BLd_wo_prefix)
    assert torch.equal(got.code_BdHW, plain.code_BdHW)
    assert got.flip_p_BK.abs().sum() == 0
    assert torch.equal(gen.get_state(), state)  # nothing drawn


def test_flip_probabilities_follow_the_official_grid() -> None:
    gen = torch.Generator().manual_seed(2)
    p = draw_flip_probs(SelfCorrectionConfig(max_p=0.3), 4, 2000, gen)
    assert p.shape == (4, 2000)
    assert torch.equal(p, p[:1].expand_as(p))  # one p per scale for the whole batch
    k = p[0] / 0.01
    torch.testing.assert_close(k, k.round(), rtol=0, atol=1e-4)
    assert p.min().item() == 0.0 and p.max().item() == pytest.approx(0.30)
    assert len(set(k.round().long().tolist())) == 31  # every grid point 0..30 occurs
    assert p.mean().item() == pytest.approx(0.15, abs=0.01)

    per_sample = draw_flip_probs(SelfCorrectionConfig(max_p=0.3, per_sample=True), 4, 50, gen)
    assert not torch.equal(per_sample[0], per_sample[1])
    first = draw_flip_probs(SelfCorrectionConfig(max_p=0.3, num_scales=2), 3, 6, gen)
    assert first[:, 2:].abs().sum() == 0
    with pytest.raises(ValueError, match=r"self_correction.max_p: expected a probability in \[0, 1\]"):
        draw_flip_probs(SelfCorrectionConfig(max_p=1.5), 1, 1, gen)


def test_flips_occur_at_the_drawn_rate_and_labels_stay_clean() -> None:
    # Two scales ending at 2x2: the scale-1 inputs are the (flipped) scale-0 code broadcast, so the flipped
    # bits can be read back from x, and the scale-1 labels are the signs of z minus that code.
    B, d = 1024, 32
    sched = [(1, 1), (2, 2)]
    z = _z(B, d, (2, 2), 3)
    cfg = SelfCorrectionConfig(max_p=0.3, per_sample=True)
    out = self_correct(z, sched, cfg, torch.Generator().manual_seed(4))
    plain = multiscale_quantize(z, sched)
    p = out.flip_p_BK[:, 0]

    assert torch.equal(out.bits_BLd[:, 0], plain.bits_BLd[:, 0])  # scale 0 labels: nothing flipped before it
    x1 = out.x_BLd_wo_prefix  # [B, 4, d]
    torch.testing.assert_close(x1, x1[:, :1].expand_as(x1))
    fed_bits = (x1[:, 0] > 0).to(torch.uint8)
    torch.testing.assert_close(x1[:, 0].abs(), torch.full((B, d), d**-0.5))
    flipped = (fed_bits != out.bits_BLd[:, 0]).float().mean(-1)  # [B]

    assert flipped[p == 0].sum().item() == 0
    assert flipped.mean().item() == pytest.approx(p.mean().item(), abs=0.015)
    assert flipped[p >= 0.2].mean().item() > flipped[(p > 0) & (p <= 0.1)].mean().item() + 0.1

    # scale-1 labels are the clean bits of the residual left by the *flipped* code
    resid = z - x1[:, 0].view(B, d, 1, 1)
    want = (resid > 0).to(torch.uint8).flatten(2).transpose(1, 2)
    assert torch.equal(out.bits_BLd[:, 1:], want)
    changed = (out.bits_BLd[:, 1:] != plain.bits_BLd[:, 1:]).any(-1).any(-1)
    assert changed[flipped > 0].float().mean().item() > 0.5 and not changed[flipped == 0].any()


def test_shared_p_flips_every_sample_at_one_rate_and_is_reproducible() -> None:
    B, d = 256, 32
    z = _z(B, d, (2, 2), 5)
    cfg = SelfCorrectionConfig(max_p=0.3)
    a = self_correct(z, [(1, 1), (2, 2)], cfg, torch.Generator().manual_seed(6))
    b = self_correct(z, [(1, 1), (2, 2)], cfg, torch.Generator().manual_seed(6))
    assert torch.equal(a.bits_BLd, b.bits_BLd) and torch.equal(a.x_BLd_wo_prefix, b.x_BLd_wo_prefix)
    p = a.flip_p_BK[:, 0]
    assert torch.equal(p, p[:1].expand_as(p))
    fed = (a.x_BLd_wo_prefix[:, 0] > 0).to(torch.uint8)
    rate = (fed != a.bits_BLd[:, 0]).float().mean().item()
    assert rate == pytest.approx(p[0].item(), abs=0.02)


def test_full_schedule_shapes_and_generator_device_check() -> None:
    z = _z(2, 16, (8, 8), 7)
    out = self_correct(z, SCHED, SelfCorrectionConfig(), torch.Generator().manual_seed(8))
    L = sum(h * w for h, w in SCHED)
    assert out.bits_BLd.shape == (2, L, 16) and out.bits_BLd.dtype == torch.uint8
    assert out.x_BLd_wo_prefix.shape == (2, L - 1, 16)
    assert out.flip_p_BK.shape == (2, len(SCHED))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="the generator is on"):
            self_correct(z.cuda(), SCHED, SelfCorrectionConfig(), torch.Generator().manual_seed(0))
