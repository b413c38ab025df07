"""`run_bench`: the chosen measurements on one preset, device and dtype, printed as a table and written as
JSON (`make bench`, `varlit bench`)."""

from __future__ import annotations

import time
from dataclasses import asdict

import torch

from ..io import atomic_write_json
from ..models.presets import get_preset
from ..models.sampler import SamplingConfig
from ..models.schedules import num_tokens
from ..pipeline import load_base, resolve_device, resolve_dtype
from .env import device_info
from .finetune import bench_finetune
from .flops import PRIOR_SOURCES
from .pretraining import bench_pretrain
from .report import format_table
from .roofline import add_roofline
from .sampling import bench_sampling
from .vae import bench_vae

H100_BF16_TFLOPS = 798.0  # dense bf16 measured on the H100s this project benchmarks on (issue 7)


def run_bench(
    preset: str = "tiny",
    pn: str | None = None,
    batch_sizes: list[int] = [1, 8],  # noqa: B006 - a typed default the CLI can show; never mutated
    steps: int = 5,
    warmup: int = 1,
    device: str = "auto",
    dtype: str = "auto",
    out: str = "bench/results.json",
    sampling: SamplingConfig | None = None,
    text_len: int = 24,
    vae_batch: int = 1,
    finetune_batch: int = 2,
    prior_sources: list[str] = ["online", "bank"],  # noqa: B006
    gradient_checkpointing: bool | None = None,
    peak_tflops: float = H100_BF16_TFLOPS,
    parts: list[str] = ["sampling", "vae", "finetune"],  # noqa: B006
    threads: int | None = None,
    seed: int = 0,
    adapter: str = "full",
    lora_rank: int = 16,
    pretrain_batch: int = 32,
    compile: bool = False,
    roofline: bool = False,
) -> dict:
    """Time sampling, VAE encode/decode and the fine-tune step on random weights; print a table, write JSON.

    Args:
        preset: tiny, infinity-2b or infinity-8b (random weights, nothing is downloaded).
        pn: pixel budget (0.06M, 0.25M, 0.60M, 1M); default: the preset's.
        batch_sizes: sampling batch sizes (images per call; CFG doubles the rows).
        steps: timed repetitions per measurement (the median is reported).
        warmup: untimed repetitions before each measurement.
        device: auto, cpu, cuda, cuda:1 ...
        dtype: auto (bf16 on GPU, float32 on CPU), float32, bfloat16.
        out: where the JSON goes (written atomically).
        sampling: cfg, tau, top_k, top_p; default: the released settings (cfg 4, tau 0.5, top-k 900,
            top-p 0.97).
        text_len: prompt length in text tokens for sampling (T5 features are random).
        vae_batch: images per VAE encode/decode call.
        finetune_batch: instance (and prior) samples per fine-tune step.
        prior_sources: prior distillation sources to time: online (teacher samples every step) and/or bank.
        gradient_checkpointing: force full-block checkpointing on or off in the fine-tune step (default:
            the module's).
        peak_tflops: the device's peak bf16 TFLOP/s for MFU (798: H100 as measured for issue 7).
        parts: which measurements to run: sampling, vae, finetune, pretrain (a from-scratch
            teacher-forced step of `varlit pretrain infinity`, every weight training).
        threads: torch intra-op CPU threads for this process (default: torch's choice). On a shared machine
            1 thread avoids stalls when another process holds a core.
        seed: weights and inputs seed.
        adapter: full (the freeze mask's tensors train) or lora (peft LoRA on the same layers) in the
            fine-tune step.
        lora_rank: LoRA rank when adapter is lora.
        pretrain_batch: images per pretraining step.
        compile: `torch.compile` the transformer of the pretraining step.
        roofline: also time a bare matmul of the FFN's shape in the run's dtype and report every achieved
            FLOP rate as a fraction of it (the CPU's practical peak, measured in the same run).
    """
    unknown = set(parts) - {"sampling", "vae", "finetune", "pretrain"}
    if unknown:
        raise ValueError(f"parts: unknown {sorted(unknown)}; choose from sampling, vae, finetune, pretrain")
    bad = set(prior_sources) - set(PRIOR_SOURCES)
    if bad:
        raise ValueError(f"prior_sources: unknown {sorted(bad)}; choose from {', '.join(PRIOR_SOURCES)}")
    if any(b < 1 for b in [*batch_sizes, vae_batch, finetune_batch, pretrain_batch]) or text_len < 1:
        raise ValueError("batch sizes and text_len must be >= 1")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    from ..tuning.lora import AdapterConfig, validate_adapter

    adapter_cfg = AdapterConfig(type=adapter, rank=lora_rank)
    validate_adapter(adapter_cfg, "adapter")
    p = get_preset(preset)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    schedule = p.schedule(1.0, pn)
    sampling = sampling or SamplingConfig()
    started = time.perf_counter()
    results: dict = {}

    if "sampling" in parts or "vae" in parts:
        model, vae = load_base(p, None, None, dev, dt, init_seed=seed, random_init=True)
        model.eval().requires_grad_(False)
        if "sampling" in parts:
            results["sampling"] = [
                bench_sampling(model, vae, p, schedule, b, sampling, text_len, warmup, steps, seed)
                for b in batch_sizes
            ]
        if "vae" in parts:
            results["vae"] = bench_vae(vae, p, schedule, vae_batch, warmup, steps, seed)
        del model, vae
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if "finetune" in parts:
        results["finetune"] = []
        for src in prior_sources:
            args = (preset, src, dev, dt, finetune_batch, pn, text_len, gradient_checkpointing)
            try:
                entry = bench_finetune(*args, warmup, steps, peak_tflops, adapter_cfg)
            except torch.OutOfMemoryError as err:  # a finding (this setting does not fit), not a crash
                entry = {"prior_source": src, "batch": finetune_batch, "status": "out_of_memory"}
                entry["reason"] = str(err).split("\n")[0]
                torch.cuda.empty_cache()
            results["finetune"].append(entry)
    if "pretrain" in parts:
        results["pretrain"] = bench_pretrain(
            p, schedule, dev, dt, pretrain_batch, text_len, compile, warmup, steps, seed
        )
    if roofline:
        add_roofline(results, dev, dt, pretrain_batch * num_tokens(schedule), p.infinity.width)

    report = {
        "device": device_info(dev),
        "settings": {
            "preset": preset,
            "pn": pn or p.pn,
            "image_size": [s * p.vae.patch_size * (2 if p.patchify else 1) for s in schedule[-1]],
            "tokens": num_tokens(schedule),
            "scales": len(schedule),
            "dtype": str(dt).removeprefix("torch."),
            "batch_sizes": list(batch_sizes),
            "steps": steps,
            "warmup": warmup,
            "sampling": asdict(sampling),
            "text_len": text_len,
            "vae_batch": vae_batch,
            "finetune_batch": finetune_batch,
            "prior_sources": list(prior_sources),
            "gradient_checkpointing": gradient_checkpointing,
            "peak_tflops": peak_tflops,
            "seed": seed,
            "adapter": adapter,
            "lora_rank": lora_rank if adapter == "lora" else None,
            "pretrain_batch": pretrain_batch,
            "compile": compile,
            "threads": torch.get_num_threads(),
        },
        "results": results,
        "wall_s": round(time.perf_counter() - started, 2),
    }
    print(format_table(report))
    atomic_write_json(out, report)
    print(f"wrote {out}")
    return report
