"""The BSQ-VAE image tokenizer of Infinity: a Flux-style conv encoder/decoder without attention.

Only the continuous encoder/decoder live here; the multi-scale bitwise quantiser is in `quantizer.py`.
Sub-module names (`.conv`, `.norm` wrapper levels, `quantizer.lfq.mask`, ...) follow the official state
dict so released checkpoints load with `strict=True`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class VAEConfig:
    """Constructor arguments of the BSQ-VAE (official names in comments)."""

    codebook_dim: int = 32  # d: latent channels = bits per latent position
    patch_size: int = 16  # spatial stride of the encoder
    base_ch: int = 128
    encoder_ch_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4, 4])
    decoder_ch_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4, 4])
    num_res_blocks: int = 2

    def __post_init__(self) -> None:
        levels = int(math.log2(self.patch_size))
        if 2**levels != self.patch_size:
            raise ValueError(f"VAE patch_size must be a power of two, got {self.patch_size}")
        for name in ("encoder_ch_mult", "decoder_ch_mult"):
            if len(getattr(self, name)) <= levels - 1:
                raise ValueError(f"VAE {name} needs more than log2(patch_size)-1={levels - 1} levels")


def _num_groups(channels: int) -> int:
    for groups in (32, 24):
        if channels % groups == 0:
            return groups
    raise ValueError(f"VAE GroupNorm needs a channel count divisible by 32 or 24, got {channels}")


class _Conv(nn.Module):
    """3x3 (or 1x1) convolution; the extra level only mirrors the official key names."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, padding: int | None = None):
        super().__init__()
        pad = kernel // 2 if padding is None else padding
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _GroupNorm(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(_num_groups(channels), channels, eps=1e-6, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1 = _GroupNorm(c_in)
        self.conv1 = _Conv(c_in, c_out)
        self.norm2 = _GroupNorm(c_out)
        self.conv2 = _Conv(c_out, c_out)
        if c_in != c_out:
            self.nin_shortcut = _Conv(c_in, c_out, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class Downsample(nn.Module):
    """Stride-2 conv after padding only right and bottom (asymmetric, as the checkpoint was trained)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = _Conv(channels, channels, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = _Conv(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: residual blocks, then an optional resampler."""

    def __init__(self, blocks: list[ResnetBlock], resample: nn.Module | None, resample_name: str):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.resample_name = resample_name
        if resample is not None:
            self.add_module(resample_name, resample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.block:
            x = blk(x)
        resample = getattr(self, self.resample_name, None)
        return resample(x) if resample is not None else x


class _Mid(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.block_1(x))


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        n_down = int(math.log2(cfg.patch_size))
        mults = cfg.encoder_ch_mult
        self.conv_in = _Conv(3, cfg.base_ch)
        levels, c = [], cfg.base_ch
        for i, m in enumerate(mults):
            c_out = cfg.base_ch * m
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(c, c_out))
                c = c_out
            levels.append(_Level(blocks, Downsample(c) if i < n_down else None, "downsample"))
        self.down = nn.ModuleList(levels)
        self.mid = _Mid(c)
        self.norm_out = _GroupNorm(c)
        self.conv_out = _Conv(c, cfg.codebook_dim)

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(img_B3HW)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        n_up = int(math.log2(cfg.patch_size))
        mults = cfg.decoder_ch_mult
        c = cfg.base_ch * mults[-1]
        self.conv_in = _Conv(cfg.codebook_dim, c)
        self.mid = _Mid(c)
        levels: list[_Level] = [None] * len(mults)  # type: ignore[list-item]
        for i in reversed(range(len(mults))):
            c_out = cfg.base_ch * mults[i]
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(c, c_out))
                c = c_out
            levels[i] = _Level(blocks, Upsample(c) if 1 <= i <= n_up else None, "upsample")
        self.up = nn.ModuleList(levels)  # stored finest-first, run coarsest-first
        self.norm_out = _GroupNorm(c)
        self.conv_out = _Conv(c, 3)

    def forward(self, z_BdHW: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z_BdHW))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class _BitMask(nn.Module):
    """The official quantiser's only state: powers of two used to pack bits into indices."""

    def __init__(self, d: int):
        super().__init__()
        self.register_buffer("mask", 2 ** torch.arange(d - 1, -1, -1, dtype=torch.int64))


class _QuantizerState(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.lfq = _BitMask(d)


class BSQVAE(nn.Module):
    """Encoder, decoder and the (stateless) BSQ quantiser's buffers. Always used frozen."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        # The official module registers its quantiser under two names; both are checkpoint entries.
        self.quantizer = _QuantizerState(cfg.codebook_dim)
        self.quantize = _QuantizerState(cfg.codebook_dim)

    @property
    def codebook_dim(self) -> int:
        return self.cfg.codebook_dim

    @property
    def patch_size(self) -> int:
        return self.cfg.patch_size

    def encode_raw(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Continuous latents z_BdHW (before quantisation) of images in [-1, 1]."""
        return self.encoder(img_B3HW)

    def decode(self, code_BdHW: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from a summed multi-scale code."""
        return self.decoder(code_BdHW).clamp_(-1, 1)
