"""The fine-tune step measurement: one full iteration of the subject-tuning module (instance + prior losses,
their backward passes and optimizer steps) on random weights and a synthetic batch, no Trainer."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..models.infinity import Infinity
from ..models.presets import get_preset
from ..models.schedules import num_tokens
from ..models.text import TextBatch
from .flops import layout_of, train_step_flops
from .timing import _memory_fields, measure, track_memory

if TYPE_CHECKING:
    from ..data.batches import SubjectBatch
    from ..module import SubjectTuningModule
    from ..tuning.lora import AdapterConfig


def _student(module: nn.Module) -> Infinity | None:
    """The Infinity inside the lead's module that has trainable weights (the teacher has none)."""
    for m in module.modules():
        if isinstance(m, Infinity) and any(p.requires_grad for p in m.parameters()):
            return m
    return None


def bench_finetune(
    preset_name: str,
    prior_source: str,
    device: torch.device,
    dtype: torch.dtype,
    batch: int,
    pn: str | None,
    text_len: int,
    gradient_checkpointing: bool | None,
    warmup: int,
    steps: int,
    peak_tflops: float,
    adapter: AdapterConfig | None = None,
) -> dict:
    """Time `module.training_step_for_bench(batch)`: one full iteration (instance + prior losses, their
    backward passes and optimizer steps)."""
    out: dict = {"prior_source": prior_source, "batch": batch}
    build = bench_module_builder()
    optional = {
        "pn": pn,
        "text_len": text_len,
        "gradient_checkpointing": gradient_checkpointing,
        "adapter": adapter,
    }
    accepted = inspect.signature(build).parameters
    extra = {k: v for k, v in optional.items() if k in accepted and v is not None}
    module, bench_batch = build(preset_name, prior_source, device, dtype, batch, **extra)
    student = _student(module)
    if student is None:
        raise RuntimeError("build_bench_module returned a module without a trainable Infinity")
    if gradient_checkpointing is not None:
        student.gradient_checkpointing = gradient_checkpointing
    schedule = getattr(bench_batch, "schedule", None) or get_preset(preset_name).schedule(1.0, pn)
    t_inst = _text_len(getattr(bench_batch, "instance_text", None), text_len)
    t_cls = _text_len(getattr(bench_batch, "class_text", None), t_inst)
    # Trainable tensors outside the transformer (the subject embedding) put a gradient on the text.
    student_params = {id(p) for p in student.parameters()}
    text_grad = any(p.requires_grad and id(p) not in student_params for p in module.parameters())
    layout = layout_of(student, text_grad)
    flops = train_step_flops(
        student.cfg,
        schedule,
        batch,
        t_inst,
        layout,
        student.gradient_checkpointing,
        prior_source,
        class_text_len=t_cls,
    )
    with track_memory(device) as mem:
        t = measure(partial(module.training_step_for_bench, bench_batch), device, warmup, steps)
    achieved = flops.total / t.median_s / 1e12
    out["formula_gb"] = _formula_gb(module, student, bench_batch, batch, schedule)
    out.update(
        status="ok",
        tokens=num_tokens(schedule),
        gradient_checkpointing=bool(student.gradient_checkpointing),
        trainable_parameters=sum(p.numel() for p in module.parameters() if p.requires_grad),
        median_s=t.median_s,
        min_s=t.min_s,
        runs_s=t.runs_s,
        flops={k: v / 1e12 for k, v in flops.as_dict().items()},
        achieved_tflops=achieved,
        mfu=achieved / peak_tflops if device.type == "cuda" else None,
        **_memory_fields(mem),
    )
    del module, bench_batch
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def _formula_gb(module, student: Infinity, bench_batch, batch: int, schedule) -> float | None:
    """The memory formula's peak (varlit.tuning.memory) for this run, next to the measured peak."""
    from ..tuning.memory import finetune_memory

    freeze, adapter = getattr(module, "freeze_cfg", None), getattr(module, "adapter_cfg", None)
    if freeze is None or adapter is None:  # a stand-in module (tests of the harness)
        return None
    bank = getattr(module, "_bank", None)
    compute = 2 if student.block_dtype == torch.bfloat16 else 4
    est = finetune_memory(
        student.cfg,
        schedule,
        batch,
        freeze=freeze,
        adapter=adapter,
        frozen_bytes=compute,
        compute_bytes=compute,
        gradient_checkpointing=bool(student.gradient_checkpointing),
        passes=2 if module.uses_prior and module.optim_cfg.schedule == "joint" else 1,
        bank_samples=len(bank) if bank is not None else 0,
        vae_params=sum(p.numel() for p in module.vae.parameters()),
    )
    return round(est.total / 2**30, 3)


def bench_module_builder() -> Callable:
    """The builder of timed modules (a seam for tests): `build_bench_module(preset, prior_source, device,
    dtype, batch_size, [pn, text_len, gradient_checkpointing]) -> (module, batch)` with random weights on
    `device` and a synthetic batch, such that `module.training_step_for_bench(batch)` runs one full
    iteration (forward, backward, optimizer step(s)) of instance + prior loss."""
    return build_bench_module


def _text_len(text: TextBatch | None, default: int) -> int:
    if isinstance(text, TextBatch):
        return int(text.lengths_B.max())
    return default


def build_bench_module(
    preset: str,
    prior_source: str,
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int,
    pn: str | None = None,
    text_len: int = 24,
    gradient_checkpointing: bool | None = None,
    adapter: AdapterConfig | None = None,
) -> tuple[SubjectTuningModule, SubjectBatch]:
    """A ready module with random weights on `device` and a synthetic batch, for timing one iteration
    (`module.training_step_for_bench(batch)`) without a Trainer, data or downloads. `adapter`: full
    (default) or LoRA fine-tuning of the freeze mask's layers."""
    from ..data.batches import SubjectBatch
    from ..models.quantizer import multiscale_quantize
    from ..module import PriorConfig, SubjectTuningModule
    from ..tuning.lora import AdapterConfig
    from ..tuning.prior_bank import InMemoryPriorBank

    device = torch.device(device)
    m = SubjectTuningModule(
        preset=preset,
        prior=PriorConfig(source=prior_source),
        gradient_checkpointing=bool(gradient_checkpointing),
        frozen_dtype="bfloat16" if dtype == torch.bfloat16 else "float32",
        init_device=str(device),
        adapter=adapter or AdapterConfig(),
    )
    m.to(device)
    m._apply_precision()
    m._move_frozen()
    p = m.preset
    schedule = p.schedule(1.0, pn)
    vae_schedule = p.vae_schedule(schedule)
    g = torch.Generator().manual_seed(0)
    H, W = vae_schedule[-1]
    z = torch.randn(batch_size, p.vae.codebook_dim, H, W, generator=g)
    q = multiscale_quantize(z, vae_schedule, p.patchify)
    feats = torch.randn(batch_size, text_len, p.infinity.text_channels, generator=g) * 0.2
    lengths = torch.full((batch_size,), text_len)
    batch = SubjectBatch(
        pixels_B3HW=torch.zeros(batch_size, 3, H * p.vae.patch_size, W * p.vae.patch_size),
        z_BdHW=z,
        bits_BLd=q.bits_BLd,
        x_BLd_wo_prefix=q.x_BLd_wo_prefix,
        instance_text=TextBatch(feats, lengths),
        instance_placeholder_B=torch.full((batch_size,), min(3, text_len - 1)),
        class_text=TextBatch(feats[:, :-1].contiguous(), lengths - 1),
        instance_prompts=["bench"] * batch_size,
        class_prompts=["bench"] * batch_size,
        schedule=schedule,
        vae_schedule=vae_schedule,
    ).to(device)
    if prior_source == "bank":
        gen = torch.Generator(device=device).manual_seed(1)
        m._bank = InMemoryPriorBank(m.teacher_samples(batch.class_text, schedule, gen))
        m._class_text = batch.class_text
        m._release_teacher()
    return m, batch
