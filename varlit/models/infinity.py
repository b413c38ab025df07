"""The Infinity transformer: next-scale prediction of bitwise tokens, conditioned on T5 text features.

One file, read top to bottom like the paper (Han et al., CVPR 2025). Attention is torch's
scaled_dot_product_attention everywhere (CPU and GPU), so neither CUDA nor flash-attn is required.
Parameter names equal the official state-dict keys, so released checkpoints load with strict=True.

Shapes: B batch, L tokens (all scales), l tokens of one scale, C width, H heads, c head size,
T text tokens, Ct text channels, d bits per token, V = 2d logits per token.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .schedules import rope_reference_grid, scale_token_offsets, schedule_h_div_w
from .text import TextBatch

LN_EPS = 1e-6
MAX_SCALES = 15  # rows of the level embedding in every released model
BLOCK_PREFIX = "block_chunks."  # state-dict names of the transformer blocks start with this
HALF_DTYPES = (torch.bfloat16, torch.float16)


def is_block_tensor(name: str) -> bool:
    """Whether a state-dict name lies in a transformer block (the only part that runs in half precision)."""
    return name.startswith(BLOCK_PREFIX)


def float32_region(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off: the official code computes the inputs, the AdaLN condition and the logits in float32."""
    return torch.autocast(t.device.type, enabled=False)


@dataclass
class InfinityConfig:
    depth: int = 32
    width: int = 2048  # C (official: embed_dim)
    num_heads: int = 16
    mlp_ratio: float = 4.0
    text_channels: int = 2048  # Ct
    text_maxlen: int = 512  # rows of the learned unconditional text
    bits: int = 32  # d per token (4 * VAE codebook_dim with spatial patchify)
    block_chunks: int = 8  # storage grouping of blocks; no numerical effect
    drop_path_rate: float = 0.0
    cond_drop_rate: float = 0.1  # text-condition dropout, training only
    max_scales: int = MAX_SCALES
    attn_scale_clamp: float = math.log(100.0)
    attention: str = "auto"  # block-causal implementation: auto | masked | per_scale (same numbers)

    def __post_init__(self) -> None:
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.depth % self.block_chunks:
            raise ValueError(f"depth {self.depth} is not divisible by block_chunks {self.block_chunks}")
        if self.attention not in ("auto", "masked", "per_scale"):
            raise ValueError(f"attention must be auto, masked or per_scale, got {self.attention!r}")
        if self.pool_heads < 1 or self.width % self.pool_heads:
            raise ValueError(
                f"text_channels {self.text_channels} gives {self.pool_heads} text-pool heads (one per 128 channels), "
                f"which must be >= 1 and divide width {self.width}"
            )

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def ffn_hidden(self) -> int:
        return round(self.width * self.mlp_ratio / 256) * 256

    @property
    def pool_heads(self) -> int:
        return self.text_channels // (64 if self.width > 4096 else 128)

    @property
    def blocks_per_chunk(self) -> int:
        return self.depth // self.block_chunks

    @property
    def vocab(self) -> int:
        return 2 * self.bits


# ----------------------------------------------------------------------------------------------------
# 2-D rotary position embedding, positions normalised to the 1M grid of the same aspect ratio


def rope_cos_sin(schedule: Sequence[tuple[int, int]], head_dim: int) -> torch.Tensor:
    """cos/sin of every token's rotation angles: [2, L, c/2] (float32).

    Pair i < c/4 rotates by row * f_i, pair i >= c/4 by col * f_(i - c/4), f_j = 10000^(-4j/c); a scale of
    h x w tokens sits on the reference grid (Hr, Wr) at rows round(y Hr/h) and cols round(x Wr/w).
    """
    half = head_dim // 2
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, half, 2, dtype=torch.int64).float() / half))
    Hr, Wr = rope_reference_grid(schedule_h_div_w(schedule))
    angles = []
    for h, w in schedule:
        rows = (torch.arange(h) * (Hr / h)).round().float()
        cols = (torch.arange(w) * (Wr / w)).round().float()
        a_row = torch.outer(rows, inv_freq)[:, None, :].expand(h, w, -1)
        a_col = torch.outer(cols, inv_freq)[None, :, :].expand(h, w, -1)
        angles.append(torch.cat([a_row, a_col], -1).reshape(h * w, half))
    ang_Lp = torch.cat(angles)
    return torch.stack([ang_Lp.cos(), ang_Lp.sin()])


def apply_rope(x_BHlc: torch.Tensor, cos_sin_2lp: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (2i, 2i+1) of the head channels; computed in float32."""
    cos, sin = cos_sin_2lp.to(x_BHlc.device)
    x = x_BHlc.float().unflatten(-1, (-1, 2))
    a, b = x[..., 0], x[..., 1]
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)
    return out.to(x_BHlc.dtype)


# ----------------------------------------------------------------------------------------------------
# Building blocks


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=LN_EPS)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop a whole residual branch per sample."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1 - p)
    return x * keep / (1 - p)


class RMSNorm(nn.Module):
    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def linear_plus_bias(layer: nn.Module, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A bias-free linear layer plus an outside bias (the q/k/v bias concatenations of the attentions).

    A plain nn.Linear folds the bias into one F.linear (the official op). A layer wrapped by an adapter
    (peft LoRA) is called, so its low-rank update applies; reading `.weight` would bypass it."""
    if type(layer) is nn.Linear:
        return F.linear(x, layer.weight, bias)
    return layer(x) + bias


@dataclass
class ScalePrefixes:
    """Block-causal attention as one mask-free SDPA call per scale: scale s attends to tokens [0, end_s).

    Same result as the boolean mask; without a mask SDPA can use its flash kernels on GPU, and the
    masked-out upper blocks are never computed. On CPU with short sequences one masked call is faster.
    """

    offsets: list[int]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        outs = [
            F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, :b], v[:, :, :b], scale=1.0)
            for a, b in zip(self.offsets[:-1], self.offsets[1:])
        ]
        return torch.cat(outs, 2)


@dataclass
class KVCache:
    """Keys (after RoPE) and values of the scales a block has already seen during sampling."""

    k_BHLc: torch.Tensor | None = None
    v_BHLc: torch.Tensor | None = None

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k_BHLc is not None:
            k, v = torch.cat([self.k_BHLc, k], 2), torch.cat([self.v_BHLc, v], 2)
        self.k_BHLc, self.v_BHLc = k, v
        return k, v


class SelfAttention(nn.Module):
    """Cosine attention: L2-normalised q and k, a learned (clamped) per-head temperature, 2-D RoPE."""

    def __init__(self, cfg: InfinityConfig):
        super().__init__()
        C, H = cfg.width, cfg.num_heads
        self.num_heads, self.clamp = H, cfg.attn_scale_clamp
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, H, 1, 1), 4.0).log())
        self.q_bias = nn.Parameter(torch.zeros(C))
        self.v_bias = nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias", torch.zeros(C))
        self.mat_qkv = nn.Linear(C, 3 * C, bias=False)
        self.proj = nn.Linear(C, C)

    def forward(
        self,
        x_BlC: torch.Tensor,
        cos_sin: torch.Tensor,
        mask_lL: torch.Tensor | None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        B, l, C = x_BlC.shape
        bias = torch.cat([self.q_bias, self.zero_k_bias, self.v_bias])
        qkv = linear_plus_bias(self.mat_qkv, x_BlC, bias).view(B, l, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, l, c]
        q = F.normalize(q, dim=-1, eps=1e-12) * self.scale_mul_1H11.clamp(max=self.clamp).exp()
        k = F.normalize(k, dim=-1, eps=1e-12)
        q, k = apply_rope(q, cos_sin), apply_rope(k, cos_sin)
        if cache is not None:
            k, v = cache.extend(k, v)
        v = v.to(q.dtype)
        if isinstance(mask_lL, ScalePrefixes):
            out = mask_lL.attend(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_lL, scale=1.0)
        return self.proj(out.transpose(1, 2).reshape(B, l, C))


class CrossAttention(nn.Module):
    """Queries from the image tokens (or learned, for pooling) attend to the prompt's own text rows."""

    def __init__(self, width: int, kv_channels: int, num_heads: int, pool: bool = False):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, width // num_heads
        if pool:
            self.mat_q = nn.Parameter(torch.zeros(1, num_heads, self.head_dim))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width))
        if not pool:
            self.mat_q = nn.Linear(width, width)
        self.mat_kv = nn.Linear(kv_channels, 2 * width, bias=False)
        self.proj = nn.Linear(width, width)

    def text_kv(self, text_BTC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [B, H, T, c]; computed once per prompt batch and reused by every scale."""
        B, T, _ = text_BTC.shape
        bias = torch.cat([self.zero_k_bias, self.v_bias])
        kv = linear_plus_bias(self.mat_kv, text_BTC, bias).view(B, T, 2, self.num_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        return k, v

    def forward(
        self, x_BlC: torch.Tensor | None, kv: tuple[torch.Tensor, torch.Tensor], text_mask_B11T
    ) -> torch.Tensor:
        k, v = kv
        B = k.shape[0]
        if x_BlC is None:  # attention pooling: one learned query per head
            q = self.mat_q.to(k.dtype).expand(B, -1, -1).unsqueeze(2)
            l = 1
        else:
            l = x_BlC.shape[1]
            q = self.mat_q(x_BlC).view(B, l, self.num_heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=text_mask_B11T)
        return self.proj(out.transpose(1, 2).reshape(B, l, -1))


class TextAttentivePool(nn.Module):
    def __init__(self, cfg: InfinityConfig):
        super().__init__()
        self.ca = CrossAttention(cfg.width, cfg.text_channels, cfg.pool_heads, pool=True)

    def forward(self, text_BTC: torch.Tensor, text_mask_B11T: torch.Tensor) -> torch.Tensor:
        return self.ca(None, self.ca.text_kv(text_BTC), text_mask_B11T).squeeze(1)


class FFN(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """x += SA(adaLN(x)) * g1;  x += CA(norm(x), text);  x += FFN(adaLN(x)) * g2."""

    def __init__(self, cfg: InfinityConfig, drop_path_p: float):
        super().__init__()
        C = cfg.width
        self.drop_path_p = drop_path_p
        self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C**0.5)
        self.sa = SelfAttention(cfg)
        self.ca = CrossAttention(C, C, cfg.num_heads)
        self.ffn = FFN(C, cfg.ffn_hidden)
        self.ca_norm = nn.LayerNorm(C, eps=LN_EPS)

    def forward(
        self,
        x_BlC: torch.Tensor,
        ada_B16C: torch.Tensor,
        text_kv: tuple[torch.Tensor, torch.Tensor],
        text_mask_B11T: torch.Tensor,
        cos_sin: torch.Tensor,
        mask_lL: torch.Tensor | None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (ada_B16C + self.ada_gss).unbind(2)
        h = self.sa(layer_norm(x_BlC) * (1 + scale1) + shift1, cos_sin, mask_lL, cache)
        x_BlC = x_BlC + drop_path(h * gamma1, self.drop_path_p, self.training)
        x_BlC = x_BlC + self.ca(self._ca_norm(x_BlC), text_kv, text_mask_B11T)
        h = self.ffn(layer_norm(x_BlC) * (1 + scale2) + shift2)
        return x_BlC + drop_path(h * gamma2, self.drop_path_p, self.training)

    def _ca_norm(self, x_BlC: torch.Tensor) -> torch.Tensor:
        """ca_norm at the residual stream's precision (what CUDA autocast does; CPU autocast would refuse
        a float32 input with bf16 weights)."""
        n = self.ca_norm
        return F.layer_norm(
            x_BlC, n.normalized_shape, n.weight.to(x_BlC.dtype), n.bias.to(x_BlC.dtype), n.eps
        )


class _Chunk(nn.Module):
    """Storage grouping of consecutive blocks (the official `block_chunks.{c}.module.{j}` keys)."""

    def __init__(self, blocks: list[Block]):
        super().__init__()
        self.module = nn.ModuleList(blocks)


class AdaLNHead(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x_BLC: torch.Tensor, cond_BC: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BC).view(-1, 1, 2, x_BLC.shape[-1]).unbind(2)
        return layer_norm(x_BLC) * (1 + scale) + shift


@dataclass
class TextContext:
    """Everything the blocks read from the prompts, computed once per prompt batch."""

    pooled_BC: torch.Tensor  # AdaLN condition (and, plus pos_start, the start token)
    ada_B16C: torch.Tensor  # shared AdaLN output, before each block's own offset
    kv_per_block: list[tuple[torch.Tensor, torch.Tensor]]
    mask_B11T: torch.Tensor

    def first(self, n: int) -> TextContext:
        """The first n prompts (the conditional half of a CFG batch)."""
        kv = [(k[:n], v[:n]) for k, v in self.kv_per_block]
        return TextContext(self.pooled_BC[:n], self.ada_B16C[:n], kv, self.mask_B11T[:n])


# ----------------------------------------------------------------------------------------------------
# The model


class Infinity(nn.Module):
    def __init__(self, cfg: InfinityConfig):
        super().__init__()
        self.cfg = cfg
        C, Ct = cfg.width, cfg.text_channels
        self.cfg_uncond = nn.Parameter(torch.randn(cfg.text_maxlen, Ct) / Ct**0.5)
        self.pos_start = nn.Parameter(torch.randn(1, 1, C) * 0.02)
        self.text_norm = RMSNorm(Ct)
        self.text_proj_for_sos = TextAttentivePool(cfg)
        self.text_proj_for_ca = nn.Sequential(nn.Linear(Ct, C), nn.GELU(approximate="tanh"), nn.Linear(C, C))
        self.lvl_embed = nn.Embedding(cfg.max_scales, C)
        self.word_embed = nn.Linear(cfg.bits, C)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        self.head_nm = AdaLNHead(C)
        self.head = nn.Linear(C, cfg.vocab)
        dpr = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # linear in depth
        blocks = [Block(cfg, dpr[i]) for i in range(cfg.depth)]
        n = cfg.blocks_per_chunk
        self.block_chunks = nn.ModuleList(_Chunk(blocks[i : i + n]) for i in range(0, cfg.depth, n))
        self.gradient_checkpointing = False
        self._rope_tables: dict[tuple, torch.Tensor] = {}

    # -- structure ------------------------------------------------------------------------------------

    @property
    def blocks(self) -> list[Block]:
        return [b for chunk in self.block_chunks for b in chunk.module]

    def block_prefix(self, i: int) -> str:
        """State-dict name prefix of block i."""
        n = self.cfg.blocks_per_chunk
        return f"block_chunks.{i // n}.module.{i % n}."

    # -- precision ------------------------------------------------------------------------------------
    # The official policy (Infinity and ARBooth): only the blocks run in bf16. The text norm and projections,
    # word_embed, lvl_embed, pos_start, cfg_uncond, the AdaLN condition (shared_ada_lin) and head_nm/head
    # stay float32 and run with autocast disabled; the residual stream between blocks stays float32.

    def set_precision(self, block_dtype: torch.dtype, keep: Collection[str] = ()) -> None:
        """Blocks' floating tensors to `block_dtype`, every other tensor to float32; names in `keep` untouched."""
        for name, t in [*self.named_parameters(), *self.named_buffers()]:
            if name in keep or not t.is_floating_point():
                continue
            want = block_dtype if is_block_tensor(name) else torch.float32
            if t.dtype != want:
                t.data = t.data.to(want)

    @property
    def io_dtype(self) -> torch.dtype:
        """dtype of the tensors outside the blocks (float32 under the official policy)."""
        return self.word_embed.weight.dtype

    @property
    def block_dtype(self) -> torch.dtype:
        """The half dtype the blocks compute in (any half-precision block tensor sets it), else float32."""
        return self._block_half_dtype() or torch.float32

    def _block_half_dtype(self) -> torch.dtype | None:
        for chunk in self.block_chunks:
            for p in chunk.parameters():
                if p.dtype in HALF_DTYPES:
                    return p.dtype
        return None

    def block_autocast(self, t: torch.Tensor) -> contextlib.AbstractContextManager:
        """Autocast to the blocks' half dtype when they hold one; otherwise whatever autocast is active."""
        half = self._block_half_dtype()
        if half is None:
            return contextlib.nullcontext()
        return torch.autocast(t.device.type, dtype=half)

    def rope(self, schedule: Sequence[tuple[int, int]], device: torch.device) -> torch.Tensor:
        key = (tuple(map(tuple, schedule)), str(device))
        if key not in self._rope_tables:
            self._rope_tables[key] = rope_cos_sin(schedule, self.cfg.head_dim).to(device)
        return self._rope_tables[key]

    # -- text -------------------------------------------------------------------------------------------

    def unconditional(self, lengths_B: torch.Tensor) -> TextBatch:
        """The learned null prompt, as long as each given prompt (how CFG pairs them)."""
        T = int(lengths_B.max())
        if T > self.cfg.text_maxlen:
            raise ValueError(
                f"prompt of {T} tokens is longer than the model's text_maxlen {self.cfg.text_maxlen}"
            )
        feats = self.cfg_uncond[:T].unsqueeze(0).expand(len(lengths_B), -1, -1)
        t = torch.arange(T, device=feats.device)
        keep = (t[None, :] < lengths_B.to(feats.device)[:, None])[..., None]
        return TextBatch(feats * keep, lengths_B)

    def drop_condition(self, text: TextBatch) -> TextBatch:
        """Training-time text dropout: whole prompts become the null prompt (enables CFG)."""
        p = self.cfg.cond_drop_rate
        if not self.training or p <= 0:
            return text
        drop_B = torch.rand(text.batch_size, device=text.features_BTC.device) < p
        if not drop_B.any():
            return text
        T = text.features_BTC.shape[1]
        uncond = self.unconditional(text.lengths_B).features_BTC
        uncond = F.pad(uncond, (0, 0, 0, T - uncond.shape[1]))
        feats = torch.where(drop_B[:, None, None], uncond.to(text.features_BTC.dtype), text.features_BTC)
        return TextBatch(feats, text.lengths_B)

    def encode_text(self, text: TextBatch) -> TextContext:
        text = text.trimmed()
        mask_BT = text.mask_BT()
        feats = text.features_BTC.to(self.io_dtype)
        feats = torch.where(mask_BT[..., None], feats, 0.0)  # padding may hold garbage
        mask_B11T = mask_BT[:, None, None, :]
        with float32_region(feats):
            normed = self.text_norm(feats)
            pooled_BC = self.text_proj_for_sos(normed, mask_B11T)
            text_ca = self.text_proj_for_ca(normed)
            ada = self.shared_ada_lin(pooled_BC).view(-1, 1, 6, self.cfg.width)
        with self.block_autocast(text_ca):  # each block's CA keys/values belong to the block
            kv = [b.ca.text_kv(text_ca) for b in self.blocks]
        return TextContext(pooled_BC, ada, kv, mask_B11T)

    # -- forward ----------------------------------------------------------------------------------------

    def start_tokens(self, ctx: TextContext) -> torch.Tensor:
        return ctx.pooled_BC.unsqueeze(1) + self.pos_start

    def embed_words(self, x_BLd: torch.Tensor) -> torch.Tensor:
        """word_embed of the next-scale inputs, in float32 with autocast off (as the official code does)."""
        with float32_region(x_BLd):
            return self.word_embed(x_BLd.to(self.io_dtype))

    def level_embedding(self, schedule: Sequence[tuple[int, int]], device: torch.device) -> torch.Tensor:
        """[L, C]: the scale index embedding of every token, added once before the first block."""
        counts = torch.tensor([h * w for h, w in schedule], device=device)
        return self.lvl_embed(torch.repeat_interleave(torch.arange(len(schedule), device=device), counts))

    def run_blocks(self, x_BLC, ctx: TextContext, cos_sin, mask_LL, caches: list[KVCache] | None = None):
        """The blocks, in their half dtype under autocast (the residual stream between them keeps io_dtype)."""
        with self.block_autocast(x_BLC):
            for i, block in enumerate(self.blocks):
                cache = caches[i] if caches is not None else None
                args = (x_BLC, ctx.ada_B16C, ctx.kv_per_block[i], ctx.mask_B11T, cos_sin, mask_LL, cache)
                if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                    x_BLC = checkpoint(block, *args, use_reentrant=False)
                else:
                    x_BLC = block(*args)
        return x_BLC

    def attention_layout(self, schedule: Sequence[tuple[int, int]], device: torch.device):
        """Block-causal self-attention over scales: per-scale SDPA calls or one boolean mask."""
        offsets = scale_token_offsets(schedule)
        impl = self.cfg.attention
        if impl == "auto":
            impl = "per_scale" if device.type == "cuda" or offsets[-1] >= 2048 else "masked"
        if impl == "per_scale":
            return ScalePrefixes(offsets)
        sizes = torch.tensor([h * w for h, w in schedule])
        scale_of = torch.repeat_interleave(torch.arange(len(schedule)), sizes)
        return (scale_of[None, :] <= scale_of[:, None]).to(device)  # key scale <= query scale

    def logits(self, x_BLC: torch.Tensor, ctx: TextContext) -> torch.Tensor:
        """head_nm and head in float32 with autocast off: float32 logits under any autocast."""
        with float32_region(x_BLC):
            dt = self.io_dtype
            return self.head(self.head_nm(x_BLC.to(dt), ctx.pooled_BC.to(dt)))

    def forward(
        self,
        text: TextBatch,
        x_BLd_wo_prefix: torch.Tensor,
        schedule: Sequence[tuple[int, int]],
        drop_condition: bool = True,
    ) -> torch.Tensor:
        """Teacher-forced logits [B, L, 2d]: token l predicts the bits of token l (start token -> scale 0).

        In training, prompts are replaced by the null prompt with probability cond_drop_rate unless
        `drop_condition` is False (e.g. for prior distillation, which must see the class prompt).
        """
        ctx = self.encode_text(self.drop_condition(text) if drop_condition else text)
        x = torch.cat([self.start_tokens(ctx), self.embed_words(x_BLd_wo_prefix)], 1)
        L = x.shape[1]
        offsets = scale_token_offsets(schedule)
        if offsets[-1] != L:
            raise ValueError(
                f"schedule has {offsets[-1]} tokens but the input has {L} (start token included)"
            )
        x = x + self.level_embedding(schedule, x.device)
        x = self.run_blocks(x, ctx, self.rope(schedule, x.device), self.attention_layout(schedule, x.device))
        return self.logits(x, ctx)
