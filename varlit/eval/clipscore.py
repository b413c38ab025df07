"""torchmetrics' CLIPScore driven by a varlit `ClipBackbone` (its callable model/processor form).

Two reasons for the adapter: torchmetrics 1.9 divides `model.get_image_features(...)` by its norm, but
transformers >= 5 returns an output object there (so a bare CLIPModel fails with "no attribute 'norm'"),
and the processor must apply the reference preprocessing. torchmetrics sends images to the processor on
the CPU one list at a time, so this is a cross-check and a convenience, not the fast path: the on-device
CLIP-T is `SubjectMetrics`. CLIPScore reports max(100 * mean cosine, 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .backbones import ClipBackbone, _pooled
from .preprocess import EVAL_SIZE, squash_many


class ClipScoreAdapter(nn.Module):
    """The `get_image_features` / `get_text_features` -> Tensor model torchmetrics expects."""

    def __init__(self, clip: ClipBackbone):
        super().__init__()
        self.clip = clip
        self.config = clip.model.config  # torchmetrics reads text_config.max_position_embeddings

    def get_image_features(self, pixel_values: Tensor) -> Tensor:
        dtype = next(self.clip.model.parameters()).dtype
        return _pooled(self.clip.model.get_image_features(pixel_values=pixel_values.to(dtype))).float()

    def get_text_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        out = self.clip.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return _pooled(out).float()


class ClipScoreProcessor:
    """Callable processor: [-1, 1] images -> squash + the backbone's preprocessing; text -> its tokenizer."""

    def __init__(self, clip: ClipBackbone, eval_size: int | None = EVAL_SIZE):
        self.clip = clip
        self.eval_size = eval_size

    def __call__(
        self,
        images: Sequence[Tensor] | None = None,
        text: Sequence[str] | None = None,
        return_tensors: str = "pt",
        padding: bool = True,
    ) -> dict[str, Tensor]:
        if return_tensors != "pt":
            raise ValueError(
                f"ClipScoreProcessor only returns torch tensors, got return_tensors={return_tensors!r}"
            )
        out: dict[str, Tensor] = {}
        if images is not None:
            with torch.no_grad():
                out["pixel_values"] = self.clip.preprocess(squash_many(list(images), self.eval_size))
        if text is not None:
            tok = self.clip.tokenizer(
                list(text),
                padding=padding,
                truncation=True,
                max_length=self.clip.max_text_tokens,
                return_tensors="pt",
            )
            out["input_ids"], out["attention_mask"] = tok["input_ids"], tok["attention_mask"]
        return out


def clip_score_metric(clip: ClipBackbone, eval_size: int | None = EVAL_SIZE):
    """A torchmetrics CLIPScore on `clip`; update(images in [-1, 1], prompts)."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    return CLIPScore(model_name_or_path=lambda: (ClipScoreAdapter(clip), ClipScoreProcessor(clip, eval_size)))
