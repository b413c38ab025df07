"""Infinity (transformer, BSQ-VAE, schedules, sampler), T5 wrapper, presets and safe loading."""

from .infinity import Infinity, InfinityConfig
from .presets import PRESETS, Preset, get_preset
from .quantizer import Quantized, multiscale_quantize
from .sampler import SampleOutput, SamplingConfig, sample
from .schedules import ScheduleError, get_schedule, nearest_h_div_w, num_tokens, scale_token_offsets
from .text import TextBatch, TextEncoder
from .vae import BSQVAE, VAEConfig

__all__ = [
    "BSQVAE",
    "Infinity",
    "InfinityConfig",
    "PRESETS",
    "Preset",
    "Quantized",
    "SampleOutput",
    "SamplingConfig",
    "ScheduleError",
    "TextBatch",
    "TextEncoder",
    "VAEConfig",
    "get_preset",
    "get_schedule",
    "multiscale_quantize",
    "nearest_h_div_w",
    "num_tokens",
    "sample",
    "scale_token_offsets",
]
