"""Run the frozen encoders once over the fixed data (photo views, prompts) and cache what they produce.

Training must never spend time in the VAE encoder or T5 on inputs that never change, so every photo view
(the photo after resize/crop, optionally flipped or zoom-cropped for augmentation) is encoded here to its raw
latents, per-scale bit labels and teacher-forcing inputs, and every fixed prompt to its T5 features.
Augmentations are therefore a fixed, cached set of views per photo, not fresh random crops per step.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from varlit.data.cache import TensorCache, cache_key, module_fingerprint
from varlit.data.images import (
    CropBox,
    Resample,
    needs_upscale,
    resize_and_crop,
    to_uint8_tensor,
    uint8_to_pm1,
)
from varlit.data.subjects import PLACEHOLDER, SubjectPhoto
from varlit.models.quantizer import multiscale_quantize
from varlit.models.schedules import Schedule, image_size, nearest_h_div_w, num_tokens
from varlit.models.text import TextBatch
from varlit.tuning.subject_embedding import check_placeholders_kept

log = logging.getLogger(__name__)

Aspect = Literal["square", "auto"]

# Zoom range of crop-augmentation views: at most a 1/1.2 (83 %) crop of the covering resize, mild enough
# that the subject stays in frame in typical few-shot photos.
_CROP_ZOOM = (1.0, 1.2)


@dataclass
class Encoders:
    """The frozen encoders the LightningModule lends the data module, plus what keys their outputs.

    `preset` is a `varlit.models.presets.Preset` (its pixel budget, and whether tokens are 2x2 latent
    patches). The ids default to fingerprints of the weights (`module_fingerprint`), so two checkpoints
    never share cache entries even when nobody names them.
    """

    vae: nn.Module
    text_encoder: nn.Module
    preset: object
    vae_id: str
    text_encoder_id: str

    @classmethod
    def create(
        cls,
        vae: nn.Module,
        text_encoder: nn.Module,
        preset: object,
        vae_id: str | None = None,
        text_encoder_id: str | None = None,
    ) -> Encoders:
        return cls(
            vae=vae,
            text_encoder=text_encoder,
            preset=preset,
            vae_id=vae_id or f"fp-{module_fingerprint(vae)}",
            text_encoder_id=text_encoder_id or f"fp-{module_fingerprint(text_encoder)}",
        )


@dataclass
class ViewPlan:
    """One view to encode: which photo, which official aspect template, which crop."""

    photo: SubjectPhoto
    h_div_w: float
    box: CropBox


@dataclass
class ImageView:
    """The cached encoding of one view. Shapes: d latent channels, (h, w) the final VAE grid, L tokens,
    d' bits per token (d, or 4d with 2x2 patchify)."""

    path: Path
    h_div_w: float
    box: CropBox
    schedule: Schedule  # transformer token grids
    vae_schedule: Schedule  # VAE latent grids (equal to `schedule` without patchify)
    pixels_3HW: torch.Tensor  # uint8, the preprocessed photo
    z_dhw: torch.Tensor  # float32 raw VAE features, before quantisation
    bits_Ld: torch.Tensor  # uint8 {0, 1}
    x_Ld_wo_prefix: torch.Tensor  # float32 [L - 1, d']


@dataclass
class PromptFeatures:
    """Cached T5 features of one prompt: only its valid rows, and where the placeholder token sits."""

    prompt: str
    features_TC: torch.Tensor  # float32
    placeholder_T: torch.Tensor  # bool, True at rows of the `<placeholder>` token


def plan_views(
    photos: Sequence[SubjectPhoto], aspect: Aspect, flip: bool, crop_views: int, seed: int = 0
) -> list[ViewPlan]:
    """The fixed views of every photo: the centre crop, plus flipped and zoom-cropped copies if asked."""
    if aspect not in ("square", "auto"):
        raise ValueError(f"aspect must be 'square' or 'auto', got {aspect!r}")
    plans = []
    for photo in photos:
        w, h = photo.image.size
        h_div_w = 1.0 if aspect == "square" else nearest_h_div_w(h / w)
        boxes = [CropBox()]
        # Seeded by the photo's content so a photo's views (and their cache keys) are the same every run.
        rng = random.Random(f"{seed}-{photo.sha256}")
        for _ in range(crop_views):
            boxes.append(CropBox(x=rng.random(), y=rng.random(), zoom=rng.uniform(*_CROP_ZOOM)))
        if flip:
            boxes += [CropBox(b.x, b.y, b.zoom, flip=True) for b in boxes]
        plans += [ViewPlan(photo, h_div_w, box) for box in boxes]
    return plans


def _schedules(encoders: Encoders, h_div_w: float, pn: str) -> tuple[Schedule, Schedule]:
    schedule = encoders.preset.schedule(h_div_w, pn)
    return schedule, encoders.preset.vae_schedule(schedule)


def _module_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(module.parameters(), None)
    if param is None:
        return torch.device("cpu"), torch.float32
    return param.device, param.dtype


def encode_views(
    plans: Sequence[ViewPlan],
    encoders: Encoders,
    cache: TensorCache,
    pn: str,
    resample: Resample = "bilinear",
    batch_size: int = 4,
) -> list[ImageView]:
    """Load every view from the cache, encoding (in batches) and caching those that are missing."""
    vae = encoders.vae
    patchify = bool(getattr(encoders.preset, "patchify", False))
    d = vae.codebook_dim
    bits_per_token = 4 * d if patchify else d
    warned: set[Path] = set()
    views: list[ImageView | None] = [None] * len(plans)
    todo: dict[tuple, list[tuple[int, str]]] = {}  # schedule -> [(plan index, key)]
    for i, plan in enumerate(plans):
        schedule, vae_schedule = _schedules(encoders, plan.h_div_w, pn)
        target_hw = image_size(vae_schedule, vae.patch_size)
        if needs_upscale(plan.photo.image.size, target_hw) and plan.photo.path not in warned:
            warned.add(plan.photo.path)
            w, h = plan.photo.image.size
            log.warning(
                "%s is %dx%d, smaller than the %dx%d training resolution: upscaling it (expect softer detail)",
                plan.photo.path,
                w,
                h,
                target_hw[1],
                target_hw[0],
            )
        key = cache_key(
            kind="image",
            preset=getattr(encoders.preset, "name", ""),
            content=plan.photo.sha256,
            vae=encoders.vae_id,
            pn=pn,
            h_div_w=plan.h_div_w,
            size=target_hw,
            vae_schedule=vae_schedule,
            patchify=patchify,
            resample=resample,
            box=asdict(plan.box),
        )
        L, (h, w) = num_tokens(schedule), vae_schedule[-1]
        spec = {
            "pixels_3HW": ((3, *target_hw), torch.uint8),
            "z_dhw": ((d, h, w), torch.float32),
            "bits_Ld": ((L, bits_per_token), torch.uint8),
            "x_Ld_wo_prefix": ((L - 1, bits_per_token), torch.float32),
        }
        entry = cache.load("image", key, spec)
        if entry is None:
            todo.setdefault((tuple(schedule), plan.h_div_w), []).append((i, key))
        else:
            views[i] = ImageView(plan.photo.path, plan.h_div_w, plan.box, schedule, vae_schedule, **entry)
    device, dtype = _module_device_dtype(vae)
    for (_, h_div_w), items in todo.items():
        schedule, vae_schedule = _schedules(encoders, h_div_w, pn)
        target_hw = image_size(vae_schedule, vae.patch_size)
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            t0 = time.perf_counter()
            pixels = torch.stack(
                [
                    to_uint8_tensor(resize_and_crop(plans[i].photo.image, target_hw, resample, plans[i].box))
                    for i, _ in chunk
                ]
            )
            with torch.no_grad():
                z = vae.encode_raw(uint8_to_pm1(pixels).to(device=device, dtype=dtype)).float()
                quantized = multiscale_quantize(z, vae_schedule, patchify=patchify)
            for j, (i, key) in enumerate(chunk):
                entry = {
                    "pixels_3HW": pixels[j],
                    "z_dhw": z[j].cpu(),
                    "bits_Ld": quantized.bits_BLd[j].to("cpu", torch.uint8),
                    "x_Ld_wo_prefix": quantized.x_BLd_wo_prefix[j].to("cpu", torch.float32),
                }
                cache.save("image", key, entry, note=str(plans[i].photo.path))
                views[i] = ImageView(
                    plans[i].photo.path, h_div_w, plans[i].box, schedule, vae_schedule, **entry
                )
            log.info("encoded %d view(s) at %dx%d in %.2fs", len(chunk), *target_hw, time.perf_counter() - t0)
    return [v for v in views if v is not None]


def _placeholder_masks(text_encoder: nn.Module, prompts: list[str], width: int) -> torch.Tensor:
    """[B, width] bool: where the tokenizer put the `<placeholder>` token (all False if it has none)."""
    masks = torch.zeros(len(prompts), width, dtype=torch.bool)
    tokenizer = getattr(text_encoder, "tokenizer", None)
    if tokenizer is None or not hasattr(text_encoder, "tokenize"):
        return masks
    token_id = tokenizer.convert_tokens_to_ids(PLACEHOLDER)
    if token_id is None or token_id == getattr(tokenizer, "unk_token_id", None):
        return masks
    ids = text_encoder.tokenize(prompts)["input_ids"]
    n = min(width, ids.shape[1])
    masks[:, :n] = ids[:, :n] == token_id
    limit = int(getattr(text_encoder, "max_length", ids.shape[1]))
    check_placeholders_kept(prompts, torch.where(masks.any(1), 0, -1), PLACEHOLDER, limit)
    return masks


def _token_ids(text_encoder: nn.Module, prompts: list[str]) -> list[list[int] | None]:
    """Each prompt's token ids (part of its cache key: the same weights with another tokenizer, e.g. one
    that learned `<placeholder>`, give other features)."""
    if not hasattr(text_encoder, "tokenize"):
        return [None] * len(prompts)
    tokens = text_encoder.tokenize(prompts)
    return [ids[mask.bool()].tolist() for ids, mask in zip(tokens["input_ids"], tokens["attention_mask"])]


def encode_prompts(
    prompts: Sequence[str], encoders: Encoders, cache: TensorCache, batch_size: int = 16
) -> dict[str, PromptFeatures]:
    """T5 features of every distinct prompt, from the cache or encoded (in batches) and cached."""
    unique = list(dict.fromkeys(prompts))
    channels = int(encoders.text_encoder.channels)
    spec = {"features_TC": ((-1, channels), torch.float32), "placeholder_T": ((-1,), torch.bool)}
    out: dict[str, PromptFeatures] = {}
    missing: list[tuple[str, str]] = []
    for prompt, ids in zip(unique, _token_ids(encoders.text_encoder, unique)):
        key = cache_key(kind="text", prompt=prompt, token_ids=ids, text_encoder=encoders.text_encoder_id)
        entry = cache.load("text", key, spec)
        if entry is None:
            missing.append((prompt, key))
        else:
            out[prompt] = PromptFeatures(prompt, **entry)
    for start in range(0, len(missing), batch_size):
        chunk = missing[start : start + batch_size]
        texts = [p for p, _ in chunk]
        batch = encoders.text_encoder.encode(texts)
        masks = _placeholder_masks(encoders.text_encoder, texts, batch.features_BTC.shape[1])
        for j, (prompt, key) in enumerate(chunk):
            n = int(batch.lengths_B[j])
            entry = {
                "features_TC": batch.features_BTC[j, :n].float().cpu(),
                "placeholder_T": masks[j, :n].clone(),
            }
            cache.save("text", key, entry, note=prompt)
            out[prompt] = PromptFeatures(prompt, **entry)
    return out


def stack_prompts(features: Sequence[PromptFeatures]) -> tuple[TextBatch, torch.Tensor]:
    """Pad prompt features into a `TextBatch` (zeros past each length) and the placeholder positions.

    Positions are int64 [B], -1 where a prompt has no placeholder token: the `positions_B` that
    `varlit.tuning.subject_embedding.splice_placeholder` takes.
    """
    t = max(f.features_TC.shape[0] for f in features)
    c = features[0].features_TC.shape[1]
    feats = torch.zeros(len(features), t, c)
    positions = torch.full((len(features),), -1, dtype=torch.int64)
    for i, f in enumerate(features):
        feats[i, : f.features_TC.shape[0]] = f.features_TC
        hits = torch.nonzero(f.placeholder_T).flatten()
        if len(hits) > 1:
            raise ValueError(f"prompt {f.prompt!r} holds {PLACEHOLDER} {len(hits)} times; use it once")
        if len(hits) == 1:
            positions[i] = hits[0]
    lengths = torch.tensor([f.features_TC.shape[0] for f in features], dtype=torch.int64)
    return TextBatch(feats, lengths), positions
