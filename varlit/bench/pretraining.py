"""The pretraining step measurement (`varlit bench --parts '[pretrain]'`): one teacher-forced step of
`varlit pretrain infinity` from scratch, every weight training; on CPUs read against the roofline
(varlit.bench.roofline)."""

from __future__ import annotations

import torch

from ..models.infinity import Infinity
from ..models.presets import Preset
from ..models.quantizer import multiscale_quantize
from ..models.schedules import Schedule, num_tokens
from .env import _autocast, random_text
from .flops import TrainableLayout, pass_flops
from .timing import measure


def bench_pretrain(
    preset: Preset,
    schedule: Schedule,
    device: torch.device,
    dtype: torch.dtype,
    batch: int,
    text_len: int,
    compile_model: bool,
    warmup: int,
    steps: int,
    seed: int,
) -> dict:
    """One teacher-forced pretraining step from scratch: every weight trains (AdamW), bitwise CE over all
    tokens, `dtype` as autocast (bf16-mixed keeps float32 master weights), optionally `torch.compile`d.

    The inputs are a fixed random batch (latents already encoded, as `varlit pretrain` caches them), so
    the time is the transformer's alone.
    """
    from ..pretrain.infinity_module import init_from_scratch
    from ..tuning.losses import bitwise_ce

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            model = Infinity(preset.infinity)
        init_from_scratch(model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    run_model = torch.compile(model) if compile_model else model
    vae_schedule = preset.vae_schedule(schedule)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, preset.vae.codebook_dim, *vae_schedule[-1], generator=g)
    q = multiscale_quantize(z, vae_schedule, preset.patchify)
    bits, x = q.bits_BLd.to(device), q.x_BLd_wo_prefix.to(device)
    text = random_text(model.cfg, batch, text_len, device, torch.float32, seed)

    def step() -> None:
        with _autocast(device, dtype):
            logits = run_model(text, x, schedule, drop_condition=True)
        loss = bitwise_ce(logits.float(), bits).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t = measure(step, device, warmup, steps)
    layout = TrainableLayout.uniform(
        model.cfg.depth, kinds=("sa", "ca", "ffn", "embed", "head", "ada"), text_grad=False
    )
    flops = pass_flops(model.cfg, schedule, text_len, batch, layout, checkpointing=False)
    return {
        "batch": batch,
        "compiled": compile_model,
        "tokens": num_tokens(schedule),
        "parameters": sum(p.numel() for p in model.parameters()),
        "median_s": t.median_s,
        "min_s": t.min_s,
        "runs_s": t.runs_s,
        "images_per_s": batch / t.median_s,
        "flops": {k: v / 1e12 for k, v in flops.as_dict().items()},
        "achieved_tflops": flops.total / t.median_s / 1e12,
    }
