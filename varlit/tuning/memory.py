"""Device memory of one fine-tune iteration, as a formula: weights, gradients, optimizer states, prior bank,
activations (and a backward workspace estimate). `python -m varlit.tuning.memory` prints the table.

Parameter counts come from the real module shapes (a model built on the meta device, the freeze mask and
the LoRA plan resolved on it), so they are exact. Activations are the tensors autograd keeps for backward,
per token of one teacher-forced pass, read from the block's graph (C width, F FFN hidden, H heads, r LoRA
rank, V = 2d logits; `a` bytes of the compute dtype, 2 under bf16 autocast, 4 in float32):

    every block     5C float32 (block input, x after SA, x after CA, the two AdaLN-normed inputs)
                    + 6 + 6H float32 (LayerNorm statistics, q/k norms, attention log-sum-exps)
                    + (10C + F) a (qkv 3C, RoPE'd q and k, SA output and projection, CA query and output,
                       FFN output, GELU input)
    trained linear  its input (the weight gradient needs it): SA qkv C, CA q C, FFN fc1 C, fc2 F, and the
                    output projections C, which in float32 share the attention output's storage (no extra
                    bytes) but under bf16 autocast with float32 LoRA weights are a separate bf16 copy;
                    LoRA adds r a per token for each.
    outside blocks  (2C + 2 + 2V) float32 (head AdaLN input and output, statistics, logits for the loss)

One pass holds B L tokens; the joint schedule keeps the instance and prior graphs alive together (2 passes),
alternating one at a time. Without checkpointing every block's tensors stay until backward; with full-block
checkpointing only each block's input (C float32 per token) stays, plus one block's tensors while it is
recomputed. The workspace term (gradients of the residual stream and of the largest block activations, 3C
float32 + 2F a per token of one pass) is an estimate of backward temporaries, not an accounting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ..models.infinity import Infinity, InfinityConfig, is_block_tensor
from ..models.schedules import num_tokens
from .freeze import FreezeConfig, resolve_for_model
from .lora import AdapterConfig, plan_lora

GiB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per term of one iteration's peak (formula)."""

    weights: int
    gradients: int
    optimizer: int
    bank: int
    activations: int
    workspace: int
    trainable_params: int
    adapter_bytes: int  # the adapter file's tensors (float32), without the subject vectors

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.bank + self.activations + self.workspace

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def block_activation_bytes(
    cfg: InfinityConfig, trained: set[str], lora_rank: int, compute_bytes: int, lora: bool
) -> float:
    """Bytes per token that one block keeps for backward in the instance pass (see the module docstring)."""
    C, F, H = cfg.width, cfg.ffn_hidden, cfg.num_heads
    f32, a = 4, compute_bytes
    out = 5 * C * f32 + (6 + 6 * H) * f32 + (10 * C + F) * a
    copies = lora and compute_bytes != 4  # bf16 copies of the projection inputs for float32 LoRA weights
    layers = 0
    if "sa" in trained:
        out += C * a + (C * a if copies else 0)  # qkv input (+ proj input copy)
        layers += 2
    if "ca" in trained:
        out += C * a + (C * a if copies else 0)  # q input (+ proj input copy); k/v read the text only
        layers += 2
    if "ffn" in trained:
        out += C * a + F * a  # fc1 input, fc2 input
        layers += 2
    if lora:
        out += layers * lora_rank * a
    return out


def outside_activation_bytes(cfg: InfinityConfig, text_grad: bool = True) -> int:
    return ((2 if text_grad else 1) * cfg.width + 2 + 2 * cfg.vocab) * 4


def prior_pass_savings(cfg: InfinityConfig, trained: set[str], compute_bytes: int) -> tuple[int, int]:
    """(bytes per token per block, extra bytes per token in block 0) that the prior pass does not keep.

    The class prompt carries no trained tensor, so the AdaLN scales and gates need no gradient: the normed
    inputs and the SA/FFN outputs they multiply are not kept (2C float32 + 2C a). Block 0's input needs no
    gradient either: with SA frozen, nothing of its SA part (nor the residual after it) is kept."""
    C, H, a = cfg.width, cfg.num_heads, compute_bytes
    per_block = 2 * C * 4 + 2 * C * a
    first = 0 if "sa" in trained else 2 * C * 4 + 4 * 4 + 5 * H * 4 + 6 * C * a
    return per_block, first


def finetune_memory(
    cfg: InfinityConfig,
    schedule: Sequence[tuple[int, int]],
    batch: int,
    freeze: FreezeConfig | None = None,
    adapter: AdapterConfig | None = None,
    frozen_bytes: int = 2,
    compute_bytes: int = 2,
    tuned_bytes: int = 4,
    gradient_checkpointing: bool = True,
    passes: int = 2,
    subject_vectors: int = 4,
    bank_samples: int = 0,
    vae_params: int = 0,
) -> MemoryEstimate:
    """The formula for one iteration (instance + prior pass when `passes` is 2, the joint schedule).

    `frozen_bytes`: bytes of the frozen block tensors (2: bf16); tensors outside the blocks are float32.
    `bank_samples`: prior-bank samples held on the device (L d (1 + 4 + 8) bytes each); `vae_params`: the
    VAE's float32 weights on the device."""
    freeze = freeze or FreezeConfig()
    adapter = adapter or AdapterConfig()
    with torch.device("meta"):
        model = Infinity(cfg)
    mask = resolve_for_model(freeze, model, cfg.depth)
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    weights = 0
    for name, t in tensors.items():
        tuned = name in mask.trainable and adapter.type == "full"
        size = tuned_bytes if tuned else (frozen_bytes if is_block_tensor(name) else 4)
        weights += t.numel() * (size if t.is_floating_point() else t.element_size())
    if adapter.type == "lora":
        plan = plan_lora(adapter, mask, model)
        linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        lora_params = sum(
            r * (linears[t].in_features + linears[t].out_features) for t, r in plan.ranks.items()
        )
        trainable = lora_params
        weights += lora_params * tuned_bytes
        rank = plan.rank
    else:
        trainable = sum(tensors[n].numel() for n in mask.trainable)
        rank = 0
    adapter_bytes = trainable * 4
    subject = subject_vectors * cfg.text_channels if freeze.subject_embedding else 0
    weights += subject * 4 + vae_params * 4
    trainable += subject
    grads = trainable * 4 if adapter.type == "lora" else (trainable - subject) * tuned_bytes + subject * 4
    optimizer = 2 * grads
    L = num_tokens(schedule)
    bank = bank_samples * L * cfg.bits * 13
    trained_kinds = {k for k in ("sa", "ca", "ffn") if mask.blocks_by_kind.get(k)}
    per_block = block_activation_bytes(cfg, trained_kinds, rank, compute_bytes, adapter.type == "lora")
    n = batch * L
    outside = outside_activation_bytes(cfg)
    # The prior pass (second of the joint schedule) keeps less: see prior_pass_savings.
    text_free = not mask.global_kinds
    saved, first = prior_pass_savings(cfg, trained_kinds, compute_bytes) if text_free else (0, 0)
    prior_outside = outside_activation_bytes(cfg, text_grad=not text_free)
    if gradient_checkpointing:
        acts = n * (cfg.depth * cfg.width * 4 + outside) + n * per_block
        acts += (passes - 1) * n * (cfg.depth * cfg.width * 4 + prior_outside)
    else:
        acts = n * (cfg.depth * per_block + outside)
        acts += (passes - 1) * n * (cfg.depth * (per_block - saved) - first + prior_outside)
    # Forward temporaries of one block; with checkpointing the recomputed block's backward also holds about
    # as much again as its kept tensors (measured on CPU; see docs/precision.md).
    workspace = n * (3 * cfg.width * 4 + 2 * cfg.ffn_hidden * compute_bytes)
    if gradient_checkpointing:
        workspace += n * per_block
    return MemoryEstimate(
        int(weights),
        int(grads),
        int(optimizer),
        int(bank),
        int(acts),
        int(workspace),
        int(trainable),
        int(adapter_bytes),
    )


def adapter_sizes(cfg: InfinityConfig, ranks: Sequence[int] = (4, 16, 64)) -> dict[str, tuple[int, int]]:
    """Parameters and float32 bytes of a CA+FFN adapter: full and LoRA at each rank (subject vectors apart)."""
    out = {}
    for name, adapter in [("full CA+FFN", AdapterConfig())] + [
        (f"lora r{r}", AdapterConfig(type="lora", rank=r)) for r in ranks
    ]:
        est = finetune_memory(cfg, [(1, 1)], 1, adapter=adapter, subject_vectors=0)
        out[name] = (est.trainable_params, est.adapter_bytes)
    return out


def table_2b(rank: int = 16) -> str:
    """Adapter sizes and the memory formula for Infinity-2B at 1024^2 (1M), batch 2, bank prior, bf16 frozen
    blocks and full-block checkpointing: LoRA at `rank` against full CA+FFN."""
    from ..models.presets import get_preset

    p = get_preset("infinity-2b")
    schedule = p.schedule(1.0, "1M")
    vae = sum(t.numel() for t in p.build("meta")[1].parameters())
    lines = ["adapter sizes (CA+FFN, float32, subject vectors apart):"]
    for name, (params, nbytes) in adapter_sizes(p.infinity).items():
        lines.append(f"  {name:12s} {params / 1e6:10.2f} M params  {nbytes / 1e6:10.1f} MB")
    lines.append(
        "memory formula (GiB), 2B, 1M (10521 tokens), batch 2, bank of 64 on device, bf16 frozen blocks, "
        "bf16 autocast:"
    )
    cols = ("weights", "gradients", "optimizer", "bank", "activations", "workspace", "total")
    lines.append(f"  {'configuration':44s}" + "".join(f"{c:>12s}" for c in cols))
    lora = AdapterConfig(type="lora", rank=rank)
    for label, adapter, ckpt, passes in (
        (f"LoRA r{rank}, ckpt, joint (default)", lora, True, 2),
        (f"LoRA r{rank}, ckpt, alternating", lora, True, 1),
        (f"LoRA r{rank}, no ckpt, joint", lora, False, 2),
        ("full CA+FFN (fp32 tuned), ckpt, joint", AdapterConfig(), True, 2),
    ):
        est = finetune_memory(
            p.infinity,
            schedule,
            2,
            adapter=adapter,
            gradient_checkpointing=ckpt,
            passes=passes,
            bank_samples=64,
            vae_params=vae,
        ).as_dict()
        lines.append(f"  {label:44s}" + "".join(f"{est[c] / GiB:12.2f}" for c in cols))
    return "\n".join(lines)


def cpu_check(
    cfg: InfinityConfig,
    schedule: Sequence[tuple[int, int]],
    batch: int,
    adapter: AdapterConfig,
    seed: int = 0,
) -> dict[str, int]:
    """The activation formula against accounting on CPU (float32, per-scale attention as on GPU), on a
    random model of `cfg` with the default (CA+FFN) mask: an instance pass (text with a gradient, as the
    subject vectors give it) and a prior pass (text without), joint loss.

    Returns the saved-tensor bytes (no checkpointing) and the allocator peak of forward + backward with
    checkpointing, each next to its formula value."""
    from ..models.text import TextBatch
    from ..tuning.freeze import apply_mask
    from ..tuning.losses import bitwise_ce
    from .lora import inject, lora_mask

    cfg = InfinityConfig(**{**asdict(cfg), "attention": "per_scale"})
    torch.manual_seed(seed)
    model = Infinity(cfg).train()
    mask = resolve_for_model(FreezeConfig(), model, cfg.depth)
    if adapter.type == "lora":
        plan = plan_lora(adapter, mask, model)
        inject(model, plan)
        mask = lora_mask(mask, model, plan)
    apply_mask(model, mask)
    g = torch.Generator().manual_seed(seed)
    L = num_tokens(schedule)
    x = torch.randn(batch, L - 1, cfg.bits, generator=g)
    bits = (torch.rand(batch, L, cfg.bits, generator=g) > 0.5).to(torch.uint8)
    feats = torch.randn(batch, 8, cfg.text_channels, generator=g)
    subject = torch.zeros(1, 1, cfg.text_channels, requires_grad=True)  # stands in for the subject vectors
    lengths = torch.full((batch,), 8)

    def step() -> torch.Tensor:
        inst = model(TextBatch(feats + subject, lengths), x, schedule, drop_condition=False)
        prior = model(TextBatch(feats, lengths), x, schedule, drop_condition=False)
        return bitwise_ce(inst, bits).mean() + bitwise_ce(prior, bits).mean()

    keep = storages([*model.parameters(), *model.buffers(), x, bits, feats, subject])
    est = finetune_memory(
        cfg,
        schedule,
        batch,
        adapter=adapter,
        frozen_bytes=4,
        compute_bytes=4,
        gradient_checkpointing=False,
        subject_vectors=0,
    )
    _, saved = saved_tensor_bytes(step, keep)
    model.gradient_checkpointing = True
    ckpt = finetune_memory(
        cfg,
        schedule,
        batch,
        adapter=adapter,
        frozen_bytes=4,
        compute_bytes=4,
        gradient_checkpointing=True,
        subject_vectors=0,
    )
    step().backward()  # warm-up: caches (RoPE tables), gradients allocated once
    model.zero_grad(set_to_none=True)
    peak = profiled_peak_bytes(lambda: step().backward())
    return {
        "saved_bytes": saved,
        "formula_activations": est.activations,
        "peak_ckpt_bytes": peak,
        "formula_ckpt": ckpt.activations + ckpt.workspace + ckpt.gradients,
    }


# A medium random shape for the CPU check (not a preset): twice the tiny width, 32 bits, 4 heads.
MEDIUM = InfinityConfig(
    depth=4, width=256, num_heads=4, text_channels=256, text_maxlen=32, bits=32, block_chunks=2
)


# ----------------------------------------------------------------------------------------------------
# Accounting on CPU: what the formula is checked against


def saved_tensor_bytes(fn, exclude: set[int]) -> tuple[object, int]:
    """(fn(), bytes of the distinct storages autograd saves for backward while fn runs), leaving out the
    storages in `exclude` (weights, inputs: counted elsewhere)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in exclude:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def profiled_peak_bytes(fn) -> int:
    """Peak of CPU allocations minus frees while fn runs (torch.profiler memory events, in time order):
    the allocator's view, temporaries included, relative to what was allocated before."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    points = []
    for e in prof.events():
        delta = e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        if delta:
            points.append((e.time_range.end, delta))
    current = peak = 0
    for _, delta in sorted(points):
        current += delta
        peak = max(peak, current)
    return peak


def storages(tensors) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors if isinstance(t, torch.Tensor)}


def cpu_table() -> str:
    from ..models.presets import get_preset

    tiny = get_preset("tiny")
    rows = ["CPU check, float32, batch 2, LoRA r4 on CA+FFN (bytes; measured / formula):"]
    for name, cfg, schedule in (
        ("tiny", tiny.infinity, tiny.schedule(1.0, None)),
        ("medium", MEDIUM, get_preset("infinity-2b").schedule(1.0, "1M")[:8]),
    ):
        r = cpu_check(cfg, schedule, 2, AdapterConfig(type="lora", rank=4))
        rows.append(
            f"  {name:7s} L={num_tokens(schedule):5d}  saved tensors {r['saved_bytes']:>12,} / "
            f"{r['formula_activations']:>12,} ({r['saved_bytes'] / r['formula_activations']:.3f})   "
            f"ckpt allocator peak {r['peak_ckpt_bytes']:>12,} / {r['formula_ckpt']:>12,} "
            f"({r['peak_ckpt_bytes'] / r['formula_ckpt']:.3f})"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    import sys

    print(table_2b())
    if "--cpu-check" in sys.argv:
        print(cpu_table())
