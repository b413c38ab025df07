"""The VAE measurement: encode (with multi-scale quantisation) and decode of a batch of images."""

from __future__ import annotations

import torch

from ..models.presets import Preset
from ..models.quantizer import multiscale_quantize
from ..models.schedules import Schedule
from ..models.vae import BSQVAE
from .env import _autocast
from .timing import _memory_fields, measure, track_memory


def bench_vae(
    vae: BSQVAE, preset: Preset, schedule: Schedule, batch: int, warmup: int, steps: int, seed: int
) -> dict:
    """Encode (conv encoder + multi-scale bitwise quantisation) and decode of `batch` images."""
    device = next(vae.parameters()).device
    vae_schedule = preset.vae_schedule(schedule)
    H, W = (s * vae.patch_size for s in vae_schedule[-1])
    g = torch.Generator().manual_seed(seed)
    img = (torch.rand(batch, 3, H, W, generator=g) * 2 - 1).to(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.no_grad(), _autocast(device, dtype):
        code = multiscale_quantize(vae.encode_raw(img).float(), vae_schedule).code_BdHW

    def encode() -> object:
        with torch.no_grad(), _autocast(device, dtype):
            return multiscale_quantize(vae.encode_raw(img).float(), vae_schedule)

    def decode() -> object:
        with torch.no_grad(), _autocast(device, dtype):
            return vae.decode(code)

    out = {"batch": batch, "image_size": [H, W]}
    for name, fn in (("encode", encode), ("decode", decode)):
        with track_memory(device) as mem:
            t = measure(fn, device, warmup, steps)
        out[name] = {"median_s": t.median_s, "per_image_s": t.median_s / batch, "runs_s": t.runs_s}
        out[name].update(_memory_fields(mem))
    return out
