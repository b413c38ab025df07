"""KV-cached next-scale sampling with classifier-free guidance (Infinity's `autoregressive_infer_cfg`).

Per scale s: the new tokens attend to the cached keys/values of all earlier scales, the logits of the
conditional and unconditional rows are mixed as cfg_s * z_c / tau_s + (1 - cfg_s) * z_u / tau_s, every bit
is drawn from its two-way distribution (top-k / top-p per bit), and the upsampled codes accumulate into
the next scale's input. Unlike the released code, text keys/values are computed once per call and RoPE
positions are those of the full sequence at every scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .infinity import Infinity, KVCache
from .quantizer import bits_to_code, next_scale_input, unpatchify_bits, upsample_code
from .schedules import scale_token_offsets
from .text import TextBatch
from .vae import BSQVAE


@dataclass
class SamplingConfig:
    """Sampling knobs; the defaults are the released Infinity-2B inference settings."""

    cfg: float | list[float] = 4.0
    tau: float | list[float] = 0.5
    top_k: int = 900  # per bit there are only two choices: any k >= 2 keeps both, k = 1 is greedy
    top_p: float = 0.97

    def per_scale(self, num_scales: int) -> tuple[list[float], list[float]]:
        def expand(v: float | list[float], name: str) -> list[float]:
            if isinstance(v, (int, float)):
                return [float(v)] * num_scales
            if len(v) < num_scales:
                raise ValueError(
                    f"sampling.{name} lists {len(v)} values but the schedule has {num_scales} scales"
                )
            return [float(x) for x in v[:num_scales]]

        taus = expand(self.tau, "tau")
        if any(t <= 0 for t in taus):
            raise ValueError(f"sampling.tau must be positive, got {self.tau}")
        return expand(self.cfg, "cfg"), taus


@dataclass
class SampleOutput:
    bits_BLd: torch.Tensor  # uint8 token bits, scales concatenated
    x_BLd_wo_prefix: torch.Tensor  # the next-scale inputs fed to word_embed
    code_BdHW: torch.Tensor  # summed code the decoder sees
    images_B3HW: torch.Tensor | None = None  # decoded, in [-1, 1]
    logits_BLV: torch.Tensor | None = None  # what each bit was drawn from (after CFG and tau)
    cond_logits_BLV: torch.Tensor | None = None  # raw conditional logits (no CFG, no tau)
    extras: dict = field(default_factory=dict)


def sample_bits(
    logits_Bld2: torch.Tensor, top_k: int, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Draw every bit from its own two-way distribution, with per-bit top-k / top-p filtering."""
    z = logits_Bld2.float()
    if top_k == 1:
        z = z.masked_fill(z < z.amax(-1, keepdim=True), float("-inf"))
    probs = z.softmax(-1)
    if top_p > 0:
        # Nucleus over two outcomes: the less likely one goes when its mass is within 1 - top_p.
        p_min, i_min = probs.min(-1, keepdim=True)
        drop = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, i_min, p_min <= 1 - top_p)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    idx = torch.multinomial(probs.view(-1, 2), 1, generator=generator)
    return idx.view(logits_Bld2.shape[:-1]).to(torch.uint8)


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


@torch.no_grad()
def sample(
    model: Infinity,
    vae: BSQVAE | None,
    text: TextBatch,
    schedule: Sequence[tuple[int, int]],
    sampling: SamplingConfig | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    patchify: bool = False,
    return_logits: bool = False,
    negative: TextBatch | None = None,
) -> SampleOutput:
    """Generate a batch of images (one per prompt in `text`); `vae=None` returns codes only.

    `negative`: features of a negative prompt (one row, or one per prompt) for the unconditional rows of
    classifier-free guidance, in place of the learned null text; guidance then pushes away from it."""
    sampling = sampling or SamplingConfig()
    cfgs, taus = sampling.per_scale(len(schedule))
    device = next(model.parameters()).device
    if generator is None:
        generator = make_generator(seed, device)
    B, d = text.batch_size, model.cfg.bits
    text = text.to(device)
    guided = any(c != 1 for c in cfgs)
    if negative is not None and negative.batch_size not in (1, B):
        raise ValueError(f"negative prompt: expected 1 or {B} rows, got {negative.batch_size}")
    if negative is None:
        uncond = model.unconditional(text.lengths_B)
    else:
        uncond = negative.to(device, text.features_BTC.dtype)
        uncond = TextBatch.cat([uncond] * B) if uncond.batch_size != B else uncond
    ctx = model.encode_text(TextBatch.cat([text, uncond]) if guided else text)
    rows = 2 * B if guided else B

    vae_schedule = [(2 * h, 2 * w) for h, w in schedule] if patchify else [tuple(s) for s in schedule]
    d_vae = d // 4 if patchify else d
    H, W = vae_schedule[-1]
    offsets = scale_token_offsets(schedule)
    cos_sin = model.rope(schedule, device)
    caches = [KVCache() for _ in model.blocks]
    summed = torch.zeros(B, d_vae, 1, H, W, device=device)
    x = model.start_tokens(ctx).expand(rows, 1, -1)
    bits_all, inputs, chosen_logits, cond_logits = [], [], [], []

    for s, (h, w) in enumerate(schedule):
        x = x + model.lvl_embed.weight[s]
        x = model.run_blocks(x, ctx, cos_sin[:, offsets[s] : offsets[s + 1]], None, caches)
        cfg_s = cfgs[s]
        if guided and cfg_s != 1:
            z = model.logits(x, ctx).float()
            if return_logits:
                cond_logits.append(z[:B])
            z = z / taus[s]
            z = cfg_s * z[:B] + (1 - cfg_s) * z[B:]
        else:
            z = model.logits(x[:B], ctx.first(B)).float()
            if return_logits:
                cond_logits.append(z)
            z = z / taus[s]
        if return_logits:
            chosen_logits.append(z)
        bits = sample_bits(z.view(B, h * w, d, 2), sampling.top_k, sampling.top_p, generator)
        bits_all.append(bits)
        bits_hw = bits.view(B, h, w, d)
        code = bits_to_code(unpatchify_bits(bits_hw) if patchify else bits_hw)
        if s < len(schedule) - 1:
            summed = summed + upsample_code(code, (H, W))
            nxt = next_scale_input(summed, vae_schedule[s + 1], patchify)
            inputs.append(nxt)
            x = model.embed_words(nxt).repeat(rows // B, 1, 1)
        else:
            summed = summed + code

    code_BdHW = summed.squeeze(2)
    out = SampleOutput(torch.cat(bits_all, 1), torch.cat(inputs, 1), code_BdHW)
    if return_logits:
        out.logits_BLV, out.cond_logits_BLV = torch.cat(chosen_logits, 1), torch.cat(cond_logits, 1)
    if vae is not None:
        out.images_B3HW = vae.decode(code_BdHW.to(next(vae.parameters()).dtype)).float()
    return out


def to_uint8(images_B3HW: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 HWC RGB, truncating like the reference (`uint8(255 * (x + 1) / 2)`)."""
    x = images_B3HW.float().clamp(-1, 1).add(1).div(2).mul(255)
    return x.permute(0, 2, 3, 1).to(torch.uint8)
