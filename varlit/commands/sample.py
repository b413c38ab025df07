"""`varlit sample`: images for prompts x seeds from a preset (random, hub or local weights) into PNGs."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..io import atomic_write_json, check_writable_dir, save_png
from ..models.presets import get_preset
from ..models.sampler import SamplingConfig, to_uint8
from ..pipeline import Pipeline, check_device, slugify
from ..tuning.adapter import read_adapter
from ..tuning.adapter_source import AdapterBase, merge_base
from ..tuning.subject_embedding import PLACEHOLDER

log = logging.getLogger(__name__)


def plural(n: int, noun: str) -> str:
    """'1 image', '2 images'."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def sample_images(
    prompts: list[str] | None = None,
    prompt_file: str | None = None,
    preset: str | None = None,
    weights: str | None = None,
    vae_weights: str | None = None,
    text_encoder: str | None = None,
    adapter: str | None = None,
    seeds: list[int] | None = None,
    sampling: SamplingConfig | None = None,
    h_div_w: float = 1.0,
    pn: str | None = None,
    batch_size: int = 8,
    out_dir: str = "runs/samples",
    device: str = "auto",
    dtype: str = "auto",
    init_seed: int | None = None,
    negative_prompt: str | None = None,
) -> list[Path]:
    """Generate one PNG per (prompt, seed) and a samples.json index of what made each file.

    Args:
        prompts: prompts to draw; use `prompt_file` for one prompt per line.
        prompt_file: text file with one prompt per line.
        preset: world, tiny, infinity-2b or infinity-8b; default: the adapter's, else tiny.
        weights: transformer checkpoint (path or file name in the hub repo); default: the adapter's base,
            else the preset's.
        vae_weights: VAE checkpoint (path or hub file name); default: the adapter's base, else the preset's.
        text_encoder: T5 hub id or folder; default: the adapter's base, else the preset's.
        adapter: a subject adapter (.safetensors) written by `varlit fit`, applied on top of the base model
            it records (a base flag that contradicts it is refused).
        seeds: one image per prompt and seed.
        sampling: cfg, tau, top_k, top_p (per-scale lists allowed for cfg and tau).
        h_div_w: aspect ratio h/w; must be one of the official templates.
        pn: pixel budget (0.06M, 0.25M, 0.60M, 1M); default: the preset's.
        batch_size: prompts sampled together.
        out_dir: where PNGs and samples.json go.
        device: auto, cpu, cuda, cuda:1 ...
        dtype: auto (bf16 on GPU, float32 on CPU), float32, bfloat16.
        init_seed: weights seed of a random-initialised preset (tiny); default: the adapter's, else 0.
        negative_prompt: what to steer away from: classifier-free guidance's unconditional rows use this
            prompt's features instead of the learned null text (needs cfg != 1).
    """
    prompt_list = list(prompts or [])
    if prompt_file:
        lines = Path(prompt_file).read_text().splitlines()
        prompt_list += [ln.strip() for ln in lines if ln.strip()]
    if not prompt_list:
        raise ValueError("empty prompt list: pass --prompts or a non-empty --prompt_file")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    seeds = list(seeds) if seeds is not None else [0]
    if adapter and not Path(adapter).is_file():  # before the (slow) base-model lookup
        raise FileNotFoundError(f"adapter not found: {adapter} (--adapter)")
    # One pass down: the adapter is read (and checked) once; its header gives the base model the flags leave
    # out; the preset is resolved once and handed to the pipeline, which then applies the adapter read here.
    read = read_adapter(adapter) if adapter else None
    given = dict(
        preset=preset,
        weights=weights,
        vae_weights=vae_weights,
        text_encoder=text_encoder,
        init_seed=init_seed,
    )
    if read is not None:
        base = merge_base(adapter, given, recorded=AdapterBase.from_meta(read.meta))
    else:
        base = {**given, "preset": preset or "tiny"}
    preset, weights, vae_weights, text_encoder = (
        base[k] for k in ("preset", "weights", "vae_weights", "text_encoder")
    )
    init_seed = base["init_seed"] if base["init_seed"] is not None else 0
    model_preset = get_preset(preset)  # resolved once, here
    sampling = sampling or model_preset.default_sampling()
    model_preset.schedule(h_div_w, pn)  # fail on a bad aspect ratio / pixel budget before loading anything
    check_writable_dir(out_dir, "out_dir")  # before any image is generated
    if adapter:
        without = [p for p in prompt_list if PLACEHOLDER not in p]
        if without:
            log.warning(
                "%d prompt(s) without %s do not use the adapter's subject, e.g. %r",
                len(without),
                PLACEHOLDER,
                without[0],
            )
    check_device(device)
    pipe = Pipeline.load(
        model_preset, weights, vae_weights, text_encoder, device=device, dtype=dtype, init_seed=init_seed
    )
    if read is not None:
        pipe.apply_adapter(read)
    out = Path(out_dir)
    written, index = [], []
    start = time.perf_counter()
    for seed in seeds:
        for b in range(0, len(prompt_list), batch_size):
            batch = prompt_list[b : b + batch_size]
            result = pipe.generate(
                batch, sampling, seed=seed, h_div_w=h_div_w, pn=pn, negative_prompt=negative_prompt
            )
            for i, (prompt, img) in enumerate(zip(batch, to_uint8(result.images_B3HW))):
                path = out / f"{b + i:03d}_s{seed}_{slugify(prompt)}.png"
                written.append(save_png(path, img))
                index.append({"file": path.name, "prompt": prompt, "seed": seed})
    elapsed = time.perf_counter() - start
    atomic_write_json(
        out / "samples.json",
        {
            "preset": preset,
            "weights": weights or pipe.preset.weights or f"random-init(seed={init_seed})",
            "adapter": adapter,
            "sampling": vars(sampling),
            "negative_prompt": negative_prompt,
            "h_div_w": h_div_w,
            "pn": pn or pipe.preset.pn,
            "seconds": round(elapsed, 3),
            "images": index,
        },
    )
    print(f"wrote {plural(len(written), 'image')} to {out} in {elapsed:.1f}s")
    return written
