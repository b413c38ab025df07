"""The official mixed-precision policy: only the transformer blocks run in bf16; the text norm and projections,
word_embed, lvl_embed/pos_start, the AdaLN condition and head_nm/head stay float32 with autocast off.

bf16 on CPU emulates what a GPU does with the same autocast rules, so the error figures here hold on both.
"""

from __future__ import annotations

import copy

import torch

from varlit.models.infinity import Infinity, is_block_tensor
from varlit.models.presets import get_preset
from varlit.models.quantizer import multiscale_quantize
from varlit.models.text import TextBatch
from varlit.pipeline import load_base

# Measured on the tiny preset below (4 blocks, width 128, random init, 521 tokens), against float32 logits:
#   official policy:        mean |dlogit| 1.9e-4, max 9.9e-4, per-bit KL 1.1e-8;
#   everything in bf16 (the old varlit policy): mean 3.4e-3, max 1.8e-2, KL 4.1e-6.
# The bounds sit at 2-4.5x the official figures, far below the all-bf16 ones.
MEAN_BOUND, MAX_BOUND, KL_BOUND = 4e-4, 3e-3, 5e-8


def _inputs(seed: int = 1):
    p = get_preset("tiny")
    schedule = p.schedule(1.0, p.pn)
    vae_schedule = p.vae_schedule(schedule)
    g = torch.Generator().manual_seed(seed)
    B, T = 2, 10
    text = TextBatch(torch.randn(B, T, p.infinity.text_channels, generator=g) * 0.5, torch.tensor([10, 6]))
    H, W = vae_schedule[-1]
    z = torch.randn(B, p.vae.codebook_dim, H, W, generator=g)
    x = multiscale_quantize(z, vae_schedule, p.patchify).x_BLd_wo_prefix
    return p, text, x, schedule


def _errors(logits: torch.Tensor, ref: torch.Tensor) -> tuple[float, float, float]:
    """(mean |d|, max |d|, per-bit KL(ref || logits)) of [B, L, 2d] logits."""
    d = (logits.float() - ref).abs()
    log_p = ref.unflatten(-1, (-1, 2)).log_softmax(-1)
    log_q = logits.float().unflatten(-1, (-1, 2)).log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    return float(d.mean()), float(d.max()), float(kl)


@torch.no_grad()
def test_official_bf16_policy_keeps_logits_close_to_float32():
    p, text, x, schedule = _inputs()
    cpu = torch.device("cpu")
    ref_model, _ = load_base(p, None, None, cpu, torch.float32, init_seed=3, random_init=True)
    bf16_model, _ = load_base(p, None, None, cpu, torch.bfloat16, init_seed=3, random_init=True)
    ref = ref_model.eval()(text, x, schedule)
    bf16_model.eval()
    plain = bf16_model(text, x, schedule)  # `varlit sample`: no autocast around the model
    with torch.autocast("cpu", dtype=torch.bfloat16):  # training under bf16-mixed
        mixed = bf16_model(text, x, schedule)
    assert plain.dtype == mixed.dtype == torch.float32
    assert torch.equal(plain, mixed)  # an outer autocast changes nothing: the model owns its precision
    mean, mx, kl = _errors(plain, ref)
    assert mean < MEAN_BOUND and mx < MAX_BOUND and kl < KL_BOUND, (mean, mx, kl)

    # The regression this guards against: the whole model in bf16 under autocast.
    every = copy.deepcopy(ref_model).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        all_bf16 = every(text, x, schedule)
    a_mean, a_max, a_kl = _errors(all_bf16, ref)
    assert a_mean > 3 * MEAN_BOUND and a_kl > 10 * KL_BOUND, (a_mean, a_max, a_kl)


@torch.no_grad()
def test_only_block_tensors_are_half_and_the_rest_computes_in_float32():
    p, text, x, schedule = _inputs()
    model, _ = load_base(p, None, None, torch.device("cpu"), torch.bfloat16, random_init=True)
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point():
            assert t.dtype == (torch.bfloat16 if is_block_tensor(name) else torch.float32), name
    assert model.block_dtype == torch.bfloat16 and model.io_dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ctx = model.encode_text(text)
        assert ctx.pooled_BC.dtype == ctx.ada_B16C.dtype == torch.float32  # text pool, AdaLN condition
        assert ctx.kv_per_block[0][0].dtype == torch.bfloat16  # each block's CA keys: the block's part
        assert model.embed_words(x).dtype == torch.float32
        h = model.run_blocks(
            torch.cat([model.start_tokens(ctx), model.embed_words(x)], 1)
            + model.level_embedding(schedule, x.device),
            ctx,
            model.rope(schedule, x.device),
            model.attention_layout(schedule, x.device),
        )
        assert h.dtype == torch.float32  # the residual stream between blocks
        assert model.logits(h, ctx).dtype == torch.float32


def test_set_precision_keeps_named_tensors_and_parameter_objects():
    model = Infinity(get_preset("tiny").infinity)
    params = dict(model.named_parameters())
    keep = {n for n in params if ".ffn." in n}
    model.set_precision(torch.bfloat16, keep=keep)
    for name, p in model.named_parameters():
        assert p is params[name]  # an optimizer built before the cast still holds them
        want = torch.float32 if (name in keep or not is_block_tensor(name)) else torch.bfloat16
        assert p.dtype == want, name
