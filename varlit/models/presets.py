"""Named model presets: the released Infinity checkpoints and a tiny random model for tests and the demo."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .infinity import Infinity, InfinityConfig
from .sampler import SamplingConfig
from .schedules import Schedule, get_schedule
from .vae import BSQVAE, VAEConfig

HF_REPO = "FoundationVision/Infinity"
WORLD_DIR = Path(__file__).resolve().parent.parent / "world" / "weights"  # the shipped world checkpoint


@dataclass
class Preset:
    """Everything needed to build (and, for real presets, download) a model family."""

    name: str
    infinity: InfinityConfig
    vae: VAEConfig
    text_encoder: str  # hub id or local folder of the T5 encoder
    pn: str = "1M"  # default pixel budget
    patchify: bool = False  # 2x2 latent patches per token (Infinity-8B)
    weights: str | None = None  # file (or sharded-index folder) name in the hub repo
    vae_weights: str | None = None
    hf_repo: str = HF_REPO
    notes: str = ""
    max_scales: int | None = None  # keep only the first scales of the official schedule (the world: 5)
    bundled: bool = False  # weights ship inside the package (built by `make world`), never downloaded
    sampling: SamplingConfig | None = None  # the preset's own sampling defaults (None: the released 2B's)

    def default_sampling(self) -> SamplingConfig:
        return replace(self.sampling) if self.sampling is not None else SamplingConfig()

    def schedule(self, h_div_w: float = 1.0, pn: str | None = None) -> Schedule:
        """Token grids of the transformer (the VAE grids are twice as fine with patchify)."""
        return get_schedule(h_div_w, pn or self.pn)[: self.max_scales]

    def vae_schedule(self, schedule: Schedule) -> Schedule:
        return [(2 * h, 2 * w) for h, w in schedule] if self.patchify else list(schedule)

    def build(self, device: torch.device | str | None = None) -> tuple[Infinity, BSQVAE]:
        with torch.device(device or "cpu"):
            return Infinity(self.infinity), BSQVAE(self.vae).eval().requires_grad_(False)


def _presets() -> dict[str, Preset]:
    vae_d32 = VAEConfig(
        codebook_dim=32,
        patch_size=16,
        base_ch=128,
        encoder_ch_mult=[1, 2, 4, 4, 4],
        decoder_ch_mult=[1, 2, 4, 4, 4],
    )
    vae_d14_f8 = VAEConfig(
        codebook_dim=14, patch_size=8, base_ch=128, encoder_ch_mult=[1, 2, 4, 4], decoder_ch_mult=[1, 2, 4, 4]
    )
    return {
        "infinity-2b": Preset(
            name="infinity-2b",
            infinity=InfinityConfig(
                depth=32,
                width=2048,
                num_heads=16,
                text_channels=2048,
                text_maxlen=512,
                bits=32,
                block_chunks=8,
                drop_path_rate=0.1,
            ),
            vae=vae_d32,
            text_encoder="google/flan-t5-xl",
            weights="infinity_2b_reg.pth",
            vae_weights="infinity_vae_d32reg.pth",
            notes="Infinity-2B, 1024 px, 13 scales, d32 BSQ-VAE",
        ),
        "infinity-8b": Preset(
            name="infinity-8b",
            infinity=InfinityConfig(
                depth=40,
                width=3584,
                num_heads=28,
                text_channels=2048,
                text_maxlen=512,
                bits=56,
                block_chunks=8,
                drop_path_rate=0.1,
            ),
            vae=vae_d14_f8,
            text_encoder="google/flan-t5-xl",
            patchify=True,
            weights="infinity_8b_weights",
            vae_weights="infinity_vae_d56_f8_14_patchify.pth",
            notes="Infinity-8B, 1024 px; 14-bit patch-8 VAE, 2x2 latent patches per token (56 bits)",
        ),
        "tiny": Preset(
            name="tiny",
            infinity=InfinityConfig(
                depth=4,
                width=128,
                num_heads=2,
                text_channels=128,
                text_maxlen=32,
                bits=16,
                block_chunks=2,
                cond_drop_rate=0.1,
            ),
            vae=VAEConfig(
                codebook_dim=16,
                patch_size=16,
                base_ch=24,
                encoder_ch_mult=[1, 1, 2, 2, 2],
                decoder_ch_mult=[1, 1, 2, 2, 2],
                num_res_blocks=1,
            ),
            text_encoder="tiny-t5",
            pn="0.06M",
            notes="random-initialised few-million-parameter model for tests and the demo (256 px, 7 scales)",
        ),
        "world": Preset(
            name="world",
            # World v2: 6 blocks of width 256 (7.1 M parameters), trained in bf16-mixed, where the CPU's
            # bf16 matmuls make it cost about what the v1 width-128 model cost in float32. The VAE has a
            # 16x16 grid of 16 bits, folded 2x2 per token (Infinity-8B's patchify): shapes survive at 4 px
            # while the transformer still reads 121 tokens. v1: width 128, patch-8 VAE of 32 bits.
            infinity=InfinityConfig(
                depth=6,
                width=256,
                num_heads=4,
                text_channels=128,
                text_maxlen=32,
                bits=64,  # 2x2 latent patches of 16 bits per token
                block_chunks=1,
                cond_drop_rate=0.1,
            ),
            vae=VAEConfig(
                codebook_dim=16,
                patch_size=4,
                base_ch=32,
                encoder_ch_mult=[1, 2, 4],
                decoder_ch_mult=[1, 2, 4],
                num_res_blocks=1,
            ),
            patchify=True,  # the Infinity-8B path: a 16x16 latent grid, still 8x8 = 121 tokens
            text_encoder=str(WORLD_DIR / "text_encoder"),
            pn="0.06M",
            max_scales=5,
            weights=str(WORLD_DIR / "infinity.safetensors"),
            vae_weights=str(WORLD_DIR / "vae.safetensors"),
            bundled=True,
            # measured on the world (docs/world.md): no top-k / top-p, softer temperature than the 2B's;
            # no guidance on the two coarsest scales (where the object is placed: four seeds then differ)
            # and cfg 6 on the rest (the class): 85 % class on 200 selection prompts against 77.5 % at cfg 3
            sampling=SamplingConfig(cfg=[1.0, 1.0, 6.0, 6.0, 6.0], tau=1.0, top_k=0, top_p=0.0),
            notes="varlit's own text-to-image world model, pretrained by `make world` (64 px, 5 scales to 8x8 tokens)",
        ),
    }


PRESETS: dict[str, Preset] = _presets()


def infinity_config_from_official(args: dict, bits: int) -> InfinityConfig:
    """Our config from the official `Infinity(**kwargs)` arguments (e.g. a checkpoint's saved args)."""
    return InfinityConfig(
        depth=int(args["depth"]),
        width=int(args["embed_dim"]),
        num_heads=int(args["num_heads"]),
        mlp_ratio=float(args.get("mlp_ratio", 4.0)),
        text_channels=int(args["text_channels"]),
        text_maxlen=int(args["text_maxlen"]),
        bits=bits,
        block_chunks=int(args.get("block_chunks", 1)),
        drop_path_rate=float(args.get("drop_path_rate", 0.0)),
        cond_drop_rate=float(args.get("cond_drop_rate", 0.1)),
    )


def vae_config_from_official(args: dict) -> VAEConfig:
    """Our VAE config from the official `AutoEncoder` argument namespace."""
    return VAEConfig(
        codebook_dim=int(args["codebook_dim"]),
        patch_size=int(args["patch_size"]),
        base_ch=int(args.get("base_ch", 128)),
        encoder_ch_mult=list(args["encoder_ch_mult"]),
        decoder_ch_mult=list(args["decoder_ch_mult"]),
        num_res_blocks=int(args.get("num_res_blocks", 2)),
    )


class UnknownPresetError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def get_preset(name: str) -> Preset:
    """A copy of a named preset (safe to modify); unknown names fail with the list of valid ones."""
    if name not in PRESETS:
        raise UnknownPresetError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    preset = PRESETS[name]
    return replace(
        preset,
        infinity=replace(preset.infinity),
        vae=replace(preset.vae),
        sampling=preset.default_sampling() if preset.sampling else None,
    )
