"""Side by side on CPU: varlit's Infinity against the official FoundationVision/Infinity code.

    python bench/compare_official.py /path/to/Infinity-checkout [--repeats 20] [--out FILE]

The official checkout is only read from the given path (it is never part of varlit and no test needs
it). Both models are built at the same config (default: varlit's `tiny` preset at 0.06M, 521 tokens)
with identical random weights: the official model is built with its own initialisation, every tensor
is then perturbed with seeded noise (so that no weight is an untested zero), and its state dict is
loaded into varlit with `varlit.models.loading.load_into` (the names are identical). The script
checks that the two compute the same function, then times them alternately (A B B A ...) and reports
the time ratio varlit / official for

* the training forward + backward (teacher-forced logits, 2-way bit cross-entropy, backward into the
  trainable subset; CA+FFN by default like ARBooth, `--trainable all` for every weight), and
* KV-cached sampling with classifier-free guidance (cfg 4, tau 0.5, top-k 900, top-p 0.97, the
  released inference settings; codes only, the VAE decoder is not part of either measurement).

How the official models are built: the training instance like its train.py defaults (SDPA with a
float block-causal mask, `pad_to_multiplier=1`, unfused norms, no checkpointing; `--official-pad 128`
gives the padding of scripts/train.sh), the sampling instance like tools/run_infinity.py
(`fused_norm=True`, which torch.compile's its AdaLN layer norm and is also what passes the scale index
to RoPE under the KV cache, `pad_to_multiplier=128`, CFG on the logits, `inference_mode=True`).

Stand-ins. The official code imports packages varlit does not install; this script puts minimal
stand-ins into `sys.modules` (only inside this process, before the official code is imported):

* `flash_attn.flash_attn_varlen_kvpacked_func` (the official cross-attention and text pooling): the
  packed variable-length keys/values are gathered into a padded [B, H, T, c] batch with a key mask
  and fed to torch's `scaled_dot_product_attention` in float32; queries are reshaped without a copy
  when every sample has the same number (always the case in Infinity). The output is float32. The
  official code casts float32 queries/keys/values to bfloat16 before this call; that cast is kept (it
  is the official behaviour), so its logits differ from an all-float32 computation by ~1e-3.
* `flash_attn.flash_attn_func`: raises; it is only used by the customised flash kernel, which is off.
  `flash_attn.ops.*` is absent, so the official code takes its own unfused fallbacks.
* `timm`: `timm.models.register_model` (identity decorator), `timm.models.layers.DropPath` and
  `drop_path` (per-sample stochastic depth; the rate is 0 here, so they are never built), and
  `timm.loss.SoftTargetCrossEntropy` (an empty module class; the official package only patches its repr).
* `pytz.timezone` (used by the official logging helpers for timestamps; returns UTC).
* The VAE: the official BSQ-VAE needs einops, torchvision and imageio, and neither measurement needs
  its convolutions. The transformer reads `embed_dim`, `vocab_size` and `quantizer.lfq.mask`, and the
  sampler calls `quantizer.lfq.indices_to_codes(bits, 'bit_label')` and `quantizer.z_interplote_up`;
  a small object provides these (bits -> codes +-1/sqrt(d), channel-first), and records the bits it is
  given so the sampled bits of the two implementations can be compared.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import math
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from varlit.bench import cpu_model
from varlit.models.infinity import Infinity, InfinityConfig
from varlit.models.loading import load_into
from varlit.models.presets import get_preset
from varlit.models.quantizer import multiscale_quantize
from varlit.models.sampler import SamplingConfig, make_generator, sample
from varlit.models.schedules import Schedule, num_tokens
from varlit.models.text import TextBatch

# ----------------------------------------------------------------------------------------------------
# Stand-ins for the official code's imports


def _flash_attn_varlen_kvpacked_func(
    q: torch.Tensor,
    kv: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    **_unused: object,
) -> torch.Tensor:
    """q [Nq, H, c] and packed kv [Nk, 2, H, c] of B variable-length samples -> [Nq, H, c] (float32)."""
    if dropout_p:
        raise ValueError("the flash-attn stand-in has no dropout")
    cu_q, cu_k = cu_seqlens_q.long(), cu_seqlens_k.long()
    B, Nq, Nk = cu_k.numel() - 1, q.shape[0], kv.shape[0]
    t = torch.arange(int(max_seqlen_k), device=kv.device)
    lens_k = cu_k[1:] - cu_k[:-1]
    rows_k = (cu_k[:-1, None] + t[None]).clamp_max(Nk - 1)  # [B, Tk]
    keep_B11T = (t[None] < lens_k[:, None])[:, None, None, :]
    k, v = kv[rows_k].float().unbind(2)  # [B, Tk, H, c] each
    uniform = Nq == B * int(max_seqlen_q) and bool((cu_q[1:] - cu_q[:-1] == int(max_seqlen_q)).all())
    if uniform:
        q_BlHc = q.view(B, int(max_seqlen_q), *q.shape[1:])
    else:
        tq = torch.arange(int(max_seqlen_q), device=q.device)
        q_BlHc = q[(cu_q[:-1, None] + tq[None]).clamp_max(Nq - 1)]
    out = F.scaled_dot_product_attention(
        q_BlHc.float().transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=keep_B11T,
        scale=softmax_scale,
    ).transpose(1, 2)  # [B, l, H, c]
    if uniform:
        return out.reshape(Nq, *q.shape[1:])
    lens_q = cu_q[1:] - cu_q[:-1]
    return out[torch.arange(int(max_seqlen_q), device=q.device)[None] < lens_q[:, None]]


def _flash_attn_func(*args: object, **kwargs: object) -> torch.Tensor:
    raise NotImplementedError("the customised flash-attn kernel is not available; build with flash off")


class _DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _drop_path(x, self.drop_prob, self.training)


def _drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False, *_: object) -> torch.Tensor:
    if drop_prob == 0.0 or not training:
        return x
    keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1 - drop_prob)
    return x * keep / (1 - drop_prob)


class _SoftTargetCrossEntropy(nn.Module):
    pass


def install_stand_ins() -> None:
    """Register the stand-in modules (see the module docstring); never overrides a real install."""

    def module(name: str, **attrs: object) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    if "flash_attn" not in sys.modules:
        module(
            "flash_attn",
            flash_attn_func=_flash_attn_func,
            flash_attn_varlen_kvpacked_func=_flash_attn_varlen_kvpacked_func,
        )
    if "timm" not in sys.modules:
        layers = module("timm.models.layers", DropPath=_DropPath, drop_path=_drop_path)
        models = module("timm.models", register_model=lambda fn: fn, layers=layers)
        loss = module("timm.loss", SoftTargetCrossEntropy=_SoftTargetCrossEntropy)
        module("timm", models=models, loss=loss)
    if "pytz" not in sys.modules:
        module("pytz", timezone=lambda name: datetime.timezone.utc)


class _StandInLFQ(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.register_buffer("mask", 2 ** torch.arange(d - 1, -1, -1, dtype=torch.int64))
        self.seen_bits: list[torch.Tensor] = []

    def indices_to_codes(self, bits: torch.Tensor, label_type: str = "bit_label") -> torch.Tensor:
        """Bits [B, 1, h, w, d] -> codes [B, d, 1, h, w] with entries +-1/sqrt(d)."""
        if label_type != "bit_label":
            raise ValueError("the VAE stand-in only decodes bit labels")
        self.seen_bits.append(bits.detach().flatten(1, -2).to(torch.uint8))  # [B, h*w, d]
        d = bits.shape[-1]
        codes = (bits.float() * 2 - 1) / math.sqrt(d)
        return codes.permute(0, 4, 1, 2, 3)


class StandInVAE(nn.Module):
    """Only what the official transformer and sampler read from their VAE."""

    def __init__(self, d: int):
        super().__init__()
        self.embed_dim = self.codebook_dim = d
        self.vocab_size = 2**d
        self.quantizer = nn.Module()
        self.quantizer.lfq = _StandInLFQ(d)
        self.quantizer.z_interplote_up = "trilinear"


# ----------------------------------------------------------------------------------------------------
# Building both models


def import_official(checkout: Path) -> type:
    if not (checkout / "infinity" / "models" / "infinity.py").is_file():
        raise SystemExit(f"{checkout}: not an Infinity checkout (no infinity/models/infinity.py)")
    install_stand_ins()
    sys.path.insert(0, str(checkout.resolve()))
    with contextlib.redirect_stdout(io.StringIO()):
        from infinity.models.infinity import Infinity as OfficialInfinity
    return OfficialInfinity


def official_kwargs(cfg: InfinityConfig, pn: str, pad: int, fused_norm: bool, inference: bool) -> dict:
    return dict(
        text_channels=cfg.text_channels,
        text_maxlen=cfg.text_maxlen,
        embed_dim=cfg.width,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        block_chunks=cfg.block_chunks,
        drop_path_rate=0.0,
        drop_rate=0.0,
        cond_drop_rate=0.0,
        shared_aln=True,
        raw_scale_schedule=None,
        checkpointing=None,
        customized_flash_attn=False,
        fused_norm=fused_norm,
        pad_to_multiplier=pad,
        use_flex_attn=False,
        add_lvl_embeding_only_first_block=1,
        use_bit_label=1,
        rope2d_each_sa_layer=1,
        rope2d_normalized_by_hw=2,
        pn=pn,
        apply_spatial_patchify=0,
        inference_mode=inference,
        train_h_div_w_list=[1.0],
    )


def build_models(
    official_cls: type, cfg: InfinityConfig, pn: str, official_pad: int, seed: int
) -> tuple[nn.Module, nn.Module, Infinity, StandInVAE]:
    """(official training instance, official sampling instance, varlit, the VAE stand-in), same weights."""
    vae = StandInVAE(cfg.bits)
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        off_train = official_cls(vae_local=vae, **official_kwargs(cfg, pn, official_pad, False, False))
        off_sample = official_cls(vae_local=vae, **official_kwargs(cfg, pn, 128, True, True))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in off_train.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    state = {k: v.clone() for k, v in off_train.state_dict().items()}
    off_sample.load_state_dict(state, strict=True)
    ours = Infinity(cfg)
    load_into(ours, state, "official state dict")
    return off_train, off_sample, ours, vae


def set_trainable(model: nn.Module, which: str) -> int:
    """Freeze everything except the CA and FFN weights of every block (or nothing, `all`)."""
    n = 0
    for name, p in model.named_parameters():
        train = which == "all" or (name.startswith("block_chunks.") and (".ca." in name or ".ffn." in name))
        p.requires_grad_(train)
        n += p.numel() if train else 0
    return n


# ----------------------------------------------------------------------------------------------------
# Inputs and the two measured operations


def make_inputs(
    cfg: InfinityConfig, schedule: Schedule, batch: int, text_len: int, seed: int
) -> tuple[TextBatch, torch.Tensor, torch.Tensor]:
    """Random prompts of different lengths, and the bits/inputs of a random latent (same for both)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([max(1, text_len - (i * text_len) // (2 * batch)) for i in range(batch)])
    feats = torch.randn(batch, text_len, cfg.text_channels, generator=g)
    feats = feats * (torch.arange(text_len)[None, :, None] < lengths[:, None, None])
    H, W = schedule[-1]
    z = torch.randn(batch, cfg.bits, H, W, generator=g)
    q = multiscale_quantize(z, schedule)
    return TextBatch(feats, lengths), q.x_BLd_wo_prefix, q.bits_BLd


def packed(text: TextBatch) -> tuple[torch.Tensor, list[int], torch.Tensor, int]:
    """The official text format: valid rows concatenated, lengths, cumulative lengths, max length."""
    lens = [int(n) for n in text.lengths_B]
    rows = torch.cat([text.features_BTC[i, :n] for i, n in enumerate(lens)])
    cu = F.pad(torch.tensor(lens, dtype=torch.int32).cumsum(0, dtype=torch.int32), (1, 0))
    return rows, lens, cu, max(lens)


def bit_ce(logits_BLV: torch.Tensor, bits_BLd: torch.Tensor) -> torch.Tensor:
    B, L = bits_BLd.shape[:2]
    return F.cross_entropy(logits_BLV.reshape(-1, 2).float(), bits_BLd.reshape(-1).long())


def official_schedule(schedule: Schedule) -> list[tuple[int, int, int]]:
    return [(1, int(h), int(w)) for h, w in schedule]


def train_step_fn(model: nn.Module, official: bool, text, x, bits, schedule) -> Callable[[], float]:
    def step() -> float:
        if official:
            logits = model(packed(text), x, official_schedule(schedule))
        else:
            logits = model(text, x, schedule)
        loss = bit_ce(logits, bits)
        loss.backward()
        for p in model.parameters():
            p.grad = None
        return float(loss.detach())

    return step


def sample_fn(
    model: nn.Module,
    official: bool,
    vae: StandInVAE,
    text: TextBatch,
    schedule: Schedule,
    sampling: SamplingConfig,
    seed: int,
) -> Callable[[], torch.Tensor]:
    K = len(schedule)
    cfgs, taus = sampling.per_scale(K)

    def run() -> torch.Tensor:
        if official:
            vae.quantizer.lfq.seen_bits.clear()
            model.autoregressive_infer_cfg(
                vae=vae,
                scale_schedule=official_schedule(schedule),
                label_B_or_BLT=packed(text),
                B=text.batch_size,
                g_seed=seed,
                cfg_list=cfgs,
                tau_list=taus,
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                returns_vemb=1,
                cfg_insertion_layer=[0],
                vae_type=1,
                ret_img=False,
                inference_mode=True,
            )
            return torch.cat(vae.quantizer.lfq.seen_bits, 1)
        return sample(model, None, text, schedule, sampling, generator=make_generator(seed, "cpu")).bits_BLd

    return run


# ----------------------------------------------------------------------------------------------------
# Checks and timing


def check_agreement(off_train, off_sample, ours, vae, text, x, bits, schedule, seed) -> dict:
    """Same function: teacher-forced logits, gradients of the trainable weights, greedy sampled bits."""
    off_train.eval(), off_sample.eval(), ours.eval()
    with torch.no_grad():
        lo = off_train(packed(text), x, official_schedule(schedule))
        lv = ours(text, x, schedule)
    logits_diff = float((lo - lv).abs().max())
    logits_scale = float(lo.abs().max())

    grads = {}
    for model, official in ((off_train, True), (ours, False)):
        model.zero_grad(set_to_none=True)
        logits = model(packed(text), x, official_schedule(schedule)) if official else model(text, x, schedule)
        bit_ce(logits, bits).backward()
        grads[official] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
    # A tensor with a gradient on one side only must have an all-zero one there (the official code puts
    # cfg_uncond on the graph with weight 0).
    for side in (True, False):
        for n in grads[side].keys() - grads[not side].keys():
            if grads[side][n].abs().max() > 0:
                raise SystemExit(f"only one implementation trains {n}")
    common = grads[True].keys() & grads[False].keys()
    grad_rel = max(
        float((grads[True][n] - grads[False][n]).norm() / grads[True][n].norm().clamp_min(1e-30))
        for n in common
    )

    greedy = SamplingConfig(cfg=4.0, tau=0.5, top_k=1, top_p=0.0)
    one = text.index(slice(0, 1))
    bits_off = sample_fn(off_sample, True, vae, one, schedule, greedy, seed)()
    bits_ours = sample_fn(ours, False, vae, one, schedule, greedy, seed)()
    same_bits = float((bits_off == bits_ours).float().mean())
    return {
        "teacher_forced_logits_max_abs_diff": logits_diff,
        "teacher_forced_logits_max_abs": logits_scale,
        "grad_max_relative_diff": grad_rel,
        "greedy_sample_bits_equal_fraction": same_bits,
        "trained_tensors": len(common),
    }


def interleaved(fns: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Time each callable `repeats` times, alternating the order (A B, B A, ...) to cancel drift."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names if r % 2 == 0 else reversed(names):
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
    return times


def summarise(times: dict[str, list[float]]) -> dict:
    med = {n: statistics.median(t) for n, t in times.items()}
    pair_ratios = [a / b for a, b in zip(times["varlit"], times["official"])]
    return {
        "official_median_ms": 1e3 * med["official"],
        "varlit_median_ms": 1e3 * med["varlit"],
        "ratio_varlit_over_official": med["varlit"] / med["official"],
        "median_of_paired_ratios": statistics.median(pair_ratios),
        # Robust to bursts of load from other processes: each side's fastest run.
        "ratio_of_minimums": min(times["varlit"]) / min(times["official"]),
        "official_ms": [round(1e3 * t, 3) for t in times["official"]],
        "varlit_ms": [round(1e3 * t, 3) for t in times["varlit"]],
    }


def profile(fn: Callable[[], object], label: str, rows: int) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            fn()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return f"==== {label} (3 calls) ====\n{table}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("official", type=Path, help="path of an official FoundationVision/Infinity checkout")
    ap.add_argument("--preset", default="tiny", help="varlit preset whose transformer shape is used")
    ap.add_argument("--pn", default=None, help="pixel budget (default: the preset's)")
    ap.add_argument("--batch", type=int, default=2, help="training batch size")
    ap.add_argument("--sample-batch", type=int, default=1, help="images per sampling call (CFG doubles rows)")
    ap.add_argument("--text-len", type=int, default=16, help="longest prompt, in text tokens")
    ap.add_argument("--trainable", choices=["ca_ffn", "all"], default="ca_ffn")
    ap.add_argument(
        "--official-pad", type=int, default=1, help="pad_to_multiplier of the official training model"
    )
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true", help="print torch.profiler tables of both sides")
    ap.add_argument("--out", type=Path, default=Path("runs/compare_official.json"))
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    official_cls = import_official(args.official)
    preset = get_preset(args.preset)
    cfg = InfinityConfig(**{**vars(preset.infinity), "drop_path_rate": 0.0, "cond_drop_rate": 0.0})
    pn = args.pn or preset.pn
    schedule = preset.schedule(1.0, pn)
    off_train, off_sample, ours, vae = build_models(official_cls, cfg, pn, args.official_pad, args.seed)
    text, x, bits = make_inputs(cfg, schedule, args.batch, args.text_len, args.seed)

    n_train = set_trainable(off_train, args.trainable)
    set_trainable(ours, args.trainable)
    agreement = check_agreement(off_train, off_sample, ours, vae, text, x, bits, schedule, args.seed)
    print("agreement:", json.dumps(agreement))
    ok = (
        agreement["teacher_forced_logits_max_abs_diff"]
        <= 2e-2 * max(1.0, agreement["teacher_forced_logits_max_abs"])
        and agreement["grad_max_relative_diff"] <= 5e-2
        and agreement["greedy_sample_bits_equal_fraction"] >= 0.98
    )
    if not ok:
        raise SystemExit("varlit and the official model disagree beyond the bf16 cross-attention margin")

    off_train.train(), ours.train()
    train = {
        "official": train_step_fn(off_train, True, text, x, bits, schedule),
        "varlit": train_step_fn(ours, False, text, x, bits, schedule),
    }
    sampling = SamplingConfig()  # cfg 4, tau 0.5, top-k 900, top-p 0.97
    off_sample.eval(), ours.eval()
    stext = TextBatch.cat([text] * math.ceil(args.sample_batch / text.batch_size)).index(
        slice(0, args.sample_batch)
    )
    samp = {
        "official": sample_fn(off_sample, True, vae, stext, schedule, sampling, args.seed),
        "varlit": sample_fn(ours, False, vae, stext, schedule, sampling, args.seed),
    }
    train_times = interleaved(train, args.warmup, args.repeats)
    sample_times = interleaved(samp, args.warmup, args.repeats)
    if args.profile:
        for name, fns in (("train fwd+bwd", train), ("sampling", samp)):
            for side, fn in fns.items():
                print(profile(fn, f"{side}: {name}", 18))

    result = {
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "settings": {
            "preset": args.preset,
            "pn": pn,
            "tokens": num_tokens(schedule),
            "scales": len(schedule),
            "depth": cfg.depth,
            "width": cfg.width,
            "heads": cfg.num_heads,
            "bits": cfg.bits,
            "train_batch": args.batch,
            "sample_batch": args.sample_batch,
            "text_lengths": [int(n) for n in text.lengths_B],
            "trainable": args.trainable,
            "trainable_parameters": n_train,
            "official_train_pad_to_multiplier": args.official_pad,
            "sampling": vars(sampling),
            "warmup": args.warmup,
            "repeats": args.repeats,
        },
        "agreement": agreement,
        "train_forward_backward": summarise(train_times),
        "sampling": summarise(sample_times),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)
    for name in ("train_forward_backward", "sampling"):
        r = result[name]
        print(
            f"{name:24s} official {r['official_median_ms']:8.2f} ms   varlit {r['varlit_median_ms']:8.2f} ms   "
            f"ratio varlit/official {r['ratio_varlit_over_official']:.3f} (paired {r['median_of_paired_ratios']:.3f}, "
            f"of minimums {r['ratio_of_minimums']:.3f})"
        )
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
