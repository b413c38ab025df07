"""The sampling measurement: latency of KV-cached sampling with CFG, VAE decode included."""

from __future__ import annotations

import torch

from ..models.infinity import Infinity
from ..models.presets import Preset
from ..models.sampler import SamplingConfig, make_generator, sample
from ..models.schedules import Schedule
from ..models.vae import BSQVAE
from .env import _autocast, random_text
from .flops import forward_flops
from .timing import _memory_fields, measure, track_memory


def bench_sampling(
    model: Infinity,
    vae: BSQVAE,
    preset: Preset,
    schedule: Schedule,
    batch: int,
    sampling: SamplingConfig,
    text_len: int,
    warmup: int,
    steps: int,
    seed: int,
) -> dict:
    """Latency of `sample` (KV-cached, CFG, VAE decode included) for one batch of prompts."""
    device, dtype = model.cfg_uncond.device, model.block_dtype
    text = random_text(model.cfg, batch, text_len, device, dtype, seed)

    def run() -> object:
        with torch.no_grad(), _autocast(device, dtype):
            return sample(
                model,
                vae,
                text,
                schedule,
                sampling,
                generator=make_generator(seed, device),
                patchify=preset.patchify,
            )

    with track_memory(device) as mem:
        t = measure(run, device, warmup, steps)
    guided = any(c != 1 for c in sampling.per_scale(len(schedule))[0])
    flops = forward_flops(model.cfg, schedule, text_len, batch * (2 if guided else 1))
    return {
        "batch": batch,
        "median_s": t.median_s,
        "per_image_s": t.median_s / batch,
        "min_s": t.min_s,
        "runs_s": t.runs_s,
        "transformer_tflop": flops / 1e12,
        "achieved_tflops": flops / t.median_s / 1e12,
        **_memory_fields(mem),
    }
