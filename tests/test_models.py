"""Infinity, BSQ-VAE, schedules and the KV-cached sampler on tiny random models."""

from __future__ import annotations

import pytest
import torch

from varlit.models.infinity import Infinity, InfinityConfig
from varlit.models.presets import PRESETS, get_preset
from varlit.models.quantizer import multiscale_quantize
from varlit.models.sampler import SamplingConfig, sample, sample_bits
from varlit.models.schedules import (
    H_DIV_W_TEMPLATES,
    PN_NUM_SCALES,
    ScheduleError,
    get_schedule,
    image_size,
    nearest_h_div_w,
    num_tokens,
)
from varlit.models.text import TextBatch
from varlit.models.vae import BSQVAE, VAEConfig


def _text(B: int, T: int, Ct: int, seed: int = 0) -> TextBatch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, T + 1, (B,), generator=g)
    feats = torch.randn(B, T, Ct, generator=g)
    return TextBatch(feats * (torch.arange(T)[None, :, None] < lengths[:, None, None]), lengths)


# -- schedules --------------------------------------------------------------------------------------


def test_square_1m_schedule_is_the_official_one():
    sched = get_schedule(1.0, "1M")
    assert [h for h, _ in sched] == [1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64]
    assert num_tokens(sched) == 10521
    assert image_size(sched) == (1024, 1024)


@pytest.mark.parametrize("h_div_w", H_DIV_W_TEMPLATES)
@pytest.mark.parametrize("pn", list(PN_NUM_SCALES))
def test_every_ratio_and_size_has_a_schedule(h_div_w: float, pn: str):
    sched = get_schedule(h_div_w, pn)
    assert len(sched) == PN_NUM_SCALES[pn]
    h, w = sched[-1]
    assert abs(h / w - h_div_w) < 0.01  # the last grid has the template's shape
    assert sched == get_schedule(h_div_w, "1M")[: len(sched)]


def test_schedule_errors_name_the_value():
    with pytest.raises(ScheduleError, match="1.1"):
        get_schedule(1.1, "1M")
    with pytest.raises(ScheduleError, match="2M"):
        get_schedule(1.0, "2M")
    assert nearest_h_div_w(1.1) == 1.0 and nearest_h_div_w(0.52) == 0.5


# -- transformer --------------------------------------------------------------------------------------


def _tiny_model(bits: int = 8, **kw) -> Infinity:
    cfg = InfinityConfig(
        depth=2,
        width=64,
        num_heads=2,
        text_channels=128,
        text_maxlen=12,
        bits=bits,
        block_chunks=2,
        cond_drop_rate=0.0,
        **kw,
    )
    torch.manual_seed(1)
    model = Infinity(cfg).eval()
    with torch.no_grad():  # move zero-initialised tensors so that every path is exercised
        for n, p in model.named_parameters():
            if "bias" in n or "scale_mul" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize(("h_div_w", "patchify"), [(1.0, False), (0.5, False), (1.333, False), (1.0, True)])
def test_kv_cached_sampling_equals_teacher_forced_forward(h_div_w: float, patchify: bool):
    """Scale-by-scale cached logits == full teacher-forced forward on the sampled tokens."""
    d_vae = 4
    bits = 4 * d_vae if patchify else d_vae
    model = _tiny_model(bits=bits)
    schedule = get_schedule(h_div_w, "0.06M")
    text = _text(2, 7, 128)
    out = sample(
        model,
        None,
        text,
        schedule,
        SamplingConfig(cfg=3.0, tau=1.0, top_k=0, top_p=0.0),
        seed=3,
        patchify=patchify,
        return_logits=True,
    )
    with torch.no_grad():
        tf = model(text, out.x_BLd_wo_prefix, schedule)
        # the unconditional rows: the learned null prompt, as long as each prompt
        tf_uncond = model(model.unconditional(text.lengths_B), out.x_BLd_wo_prefix, schedule)
    assert out.cond_logits_BLV.shape == tf.shape == (2, num_tokens(schedule), 2 * bits)
    torch.testing.assert_close(out.cond_logits_BLV, tf, atol=2e-5, rtol=1e-5)
    # what the bits were drawn from: cfg * z_c + (1 - cfg) * z_u (tau 1), both recomputed without the cache
    assert not torch.allclose(tf, tf_uncond, atol=1e-3)
    torch.testing.assert_close(out.logits_BLV, 3.0 * tf + (1 - 3.0) * tf_uncond, atol=1e-4, rtol=1e-5)


def _hand_rope(rows: list[int], cols: list[int], head_dim: int) -> torch.Tensor:
    """[2, n, c/2] cos/sin for tokens at (rows[i], cols[i]): pairs i < c/4 turn by row * 10000^(-4i/c),
    pairs i >= c/4 by col * 10000^(-4(i - c/4)/c)."""
    quarter = head_dim // 4
    freq = torch.tensor([10000.0 ** (-4 * j / head_dim) for j in range(quarter)], dtype=torch.float32)
    r = torch.tensor(rows, dtype=torch.float32)[:, None] * freq
    c = torch.tensor(cols, dtype=torch.float32)[:, None] * freq
    ang = torch.cat([r, c], -1)
    return torch.stack([ang.cos(), ang.sin()])


@pytest.mark.parametrize(
    ("h_div_w", "rows", "cols"),
    [
        # square: the 1M reference grid is 64 x 64; scales 1x1, 2x2, 4x4 (row-major tokens)
        (
            1.0,
            [0] + [0, 0, 32, 32] + [0] * 4 + [16] * 4 + [32] * 4 + [48] * 4,
            [0] + [0, 32, 0, 32] + [0, 16, 32, 48] * 4,
        ),
        # h/w 0.5: reference grid 45 x 90; scales 1x1, 2x2, 2x4; 22.5 rounds to 22 and 67.5 to 68 (half to even)
        (0.5, [0] + [0, 0, 22, 22] + [0] * 4 + [22] * 4, [0] + [0, 45, 0, 45] + [0, 22, 45, 68] * 2),
        # h/w 2: reference grid 90 x 45; scales 1x1, 2x2, 4x2 (rows 0, 22.5, 45, 67.5 -> 0, 22, 45, 68)
        (2.0, [0] + [0, 0, 45, 45] + [0, 0, 22, 22, 45, 45, 68, 68], [0] + [0, 22, 0, 22] + [0, 22] * 4),
    ],
)
def test_rope_positions_of_the_first_scales(h_div_w: float, rows: list[int], cols: list[int]):
    """The RoPE table the sampler and the forward pass use, checked for the first three scales by hand."""
    model = _tiny_model()
    schedule = get_schedule(h_div_w, "0.06M")
    n = len(rows)
    assert n == num_tokens(schedule[:3])
    table = model.rope(schedule, torch.device("cpu"))
    assert table.shape == (2, num_tokens(schedule), model.cfg.head_dim // 2)
    torch.testing.assert_close(table[:, :n], _hand_rope(rows, cols, model.cfg.head_dim), atol=1e-6, rtol=0)


def test_training_forward_backward_and_gradient_checkpointing_agree():
    model = _tiny_model()
    model.train()
    schedule = get_schedule(1.0, "0.06M")
    text = _text(2, 5, 128)
    x = torch.randn(2, num_tokens(schedule) - 1, 8)
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = ckpt
        model(text, x, schedule).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5)


def test_per_scale_attention_equals_masked_attention():
    schedule = get_schedule(1.5, "0.06M")
    text = _text(2, 5, 128)
    x = torch.randn(2, num_tokens(schedule) - 1, 8)
    outs = []
    for impl in ("masked", "per_scale"):
        model = _tiny_model()
        model.cfg.attention = impl
        with torch.no_grad():
            outs.append(model(text, x, schedule))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


def test_text_padding_is_never_read():
    model = _tiny_model()
    schedule = get_schedule(1.0, "0.06M")
    text = _text(2, 6, 128)
    x = torch.randn(2, num_tokens(schedule) - 1, 8)
    noisy = text.features_BTC.clone()
    noisy[~text.mask_BT()] = 1e6
    with torch.no_grad():
        a = model(text, x, schedule)
        b = model(TextBatch(noisy, text.lengths_B), x, schedule)
    assert torch.equal(a, b)


def test_condition_dropout_only_in_training():
    model = _tiny_model()
    model.cfg.cond_drop_rate = 1.0
    text = _text(2, 5, 128)
    assert model.drop_condition(text) is text  # eval: untouched (the released code drops even in eval)
    model.train()
    dropped = model.drop_condition(text)
    T = int(text.lengths_B.max())
    expect = model.unconditional(text.lengths_B).features_BTC
    torch.testing.assert_close(dropped.features_BTC[:, :T], expect)


# -- sampler ---------------------------------------------------------------------------------------------


def test_sampling_is_seeded_and_batch_independent_when_greedy(tiny_pipeline):
    prompts = ["a photo of a dog", "a red clock in the snow"]
    greedy = SamplingConfig(cfg=3.0, tau=0.5, top_k=1, top_p=0.0)
    both = tiny_pipeline.generate(prompts, greedy, seed=0)
    for i, p in enumerate(prompts):
        one = tiny_pipeline.generate([p], greedy, seed=0)
        assert torch.equal(one.bits_BLd[0], both.bits_BLd[i])
    a = tiny_pipeline.generate(prompts, SamplingConfig(), seed=5)
    b = tiny_pipeline.generate(prompts, SamplingConfig(), seed=5)
    c = tiny_pipeline.generate(prompts, SamplingConfig(), seed=6)
    assert torch.equal(a.images_B3HW, b.images_B3HW)
    assert not torch.equal(a.bits_BLd, c.bits_BLd)
    assert a.images_B3HW.shape == (2, 3, 256, 256)
    assert a.images_B3HW.min() >= -1 and a.images_B3HW.max() <= 1


def test_sample_bits_top_k_and_top_p():
    logits = torch.tensor([[[[0.0, 2.0], [1.0, 1.0], [3.0, -3.0]]]])  # B=1, l=1, d=3
    g = torch.Generator().manual_seed(0)
    greedy = sample_bits(logits, top_k=1, top_p=0.0, generator=g)
    assert greedy[0, 0, 0] == 1 and greedy[0, 0, 2] == 0
    # top_p keeps only the likelier outcome when the other has <= 1 - top_p mass
    many = torch.stack([sample_bits(logits, top_k=0, top_p=0.8, generator=g) for _ in range(200)])
    assert (many[..., 0] == 1).all() and (many[..., 2] == 0).all()
    assert 0 < many[..., 1].float().mean() < 1  # a tie keeps both outcomes


def test_sampling_config_validation():
    with pytest.raises(ValueError, match="tau"):
        SamplingConfig(tau=0.0).per_scale(3)
    with pytest.raises(ValueError, match="cfg"):
        SamplingConfig(cfg=[1.0, 2.0]).per_scale(3)
    assert SamplingConfig(cfg=[1.0, 2.0, 3.0, 4.0]).per_scale(3)[0] == [1.0, 2.0, 3.0]


def test_empty_prompt_list_is_rejected(tiny_pipeline):
    with pytest.raises(ValueError, match="empty prompt list"):
        tiny_pipeline.generate([], SamplingConfig())


# -- VAE and quantiser ----------------------------------------------------------------------------------


def test_vae_shapes_and_quantiser_roundtrip():
    cfg = VAEConfig(
        codebook_dim=8,
        patch_size=16,
        base_ch=24,
        encoder_ch_mult=[1, 1, 2, 2, 2],
        decoder_ch_mult=[1, 1, 2, 2, 2],
        num_res_blocks=1,
    )
    vae = BSQVAE(cfg).eval()
    img = torch.rand(2, 3, 128, 192) * 2 - 1
    with torch.no_grad():
        z = vae.encode_raw(img)
        assert z.shape == (2, 8, 8, 12)
        sched = get_schedule(0.666, "0.06M")
        # 0.666 at 0.06M ends on a (h, w) grid; build a latent of that grid
        h, w = sched[-1]
        z = torch.randn(2, 8, h, w)
        q = multiscale_quantize(z, sched)
        assert q.bits_BLd.shape == (2, num_tokens(sched), 8)
        assert set(q.bits_BLd.unique().tolist()) <= {0, 1}
        assert q.x_BLd_wo_prefix.shape == (2, num_tokens(sched) - 1, 8)
        # the summed code explains most of the latent direction
        cos = torch.nn.functional.cosine_similarity(q.code_BdHW.flatten(1), z.flatten(1))
        assert (cos > 0.5).all()
        assert vae.decode(q.code_BdHW).shape == (2, 3, 16 * h, 16 * w)


def test_self_correction_flips_inputs_but_not_labels():
    z = torch.randn(2, 8, 16, 16)
    sched = get_schedule(1.0, "0.06M")
    clean = multiscale_quantize(z, sched)
    flip = torch.full((2, len(sched)), 0.3)
    noisy = multiscale_quantize(z, sched, flip_prob_BK=flip, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(noisy.x_BLd_wo_prefix, clean.x_BLd_wo_prefix)
    # scale 0 has no earlier mistakes to repair: its labels are unchanged
    assert torch.equal(noisy.bits_BLd[:, :1], clean.bits_BLd[:, :1])
    zero = multiscale_quantize(z, sched, flip_prob_BK=torch.zeros(2, len(sched)))
    assert torch.equal(zero.bits_BLd, clean.bits_BLd)
    torch.testing.assert_close(zero.x_BLd_wo_prefix, clean.x_BLd_wo_prefix)


def test_presets_and_unknown_preset():
    assert set(PRESETS) >= {"tiny", "infinity-2b", "infinity-8b"}
    model, vae = get_preset("tiny").build()
    n = sum(p.numel() for p in model.parameters()) + sum(p.numel() for p in vae.parameters())
    assert 1e6 < n < 2e7
    with pytest.raises(KeyError, match="unknown preset 'nope'.*tiny"):
        get_preset("nope")
