"""The learned subject embedding: N vectors that replace the T5 output of the `<placeholder>` token.

As in the released ARBooth code, the placeholder's single T5 row is *replaced by all N rows* (the prompt
grows by N - 1 rows; the tokens after it shift right), not overwritten in place. The T5 encoder still
sees the placeholder token itself (its input embedding is frozen), so the other rows are the T5 outputs
of the full prompt. The release initialises the N vectors (4 x 2048 there) to zeros.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import torch
from torch import nn

PLACEHOLDER = "<placeholder>"

_Text = TypeVar("_Text")


def check_placeholders_kept(
    prompts: list[str], positions_B: torch.Tensor, placeholder: str, limit: int
) -> None:
    """A prompt that writes the placeholder but whose token was cut off by the text length limit is an error
    (the subject would silently be missing from it)."""
    for prompt, pos in zip(prompts, positions_B.tolist()):
        if pos < 0 and placeholder in prompt:
            raise ValueError(
                f"prompt {prompt!r}: {placeholder} lies past the text encoder's limit of {limit} tokens and "
                "would be cut off; shorten the prompt or move the placeholder forward"
            )


def find_placeholder(
    input_ids_BT: torch.Tensor, token_id: int, lengths_B: torch.Tensor | None = None
) -> torch.Tensor:
    """int64 [B]: the position of the placeholder token per prompt, -1 where there is none.

    More than one placeholder in a prompt is an error (the splice inserts one block of vectors).
    """
    hit = input_ids_BT == token_id
    if lengths_B is not None:
        t = torch.arange(input_ids_BT.shape[1], device=input_ids_BT.device)
        hit &= t[None, :] < lengths_B.to(t.device)[:, None]
    count = hit.sum(1)
    if bool((count > 1).any()):
        bad = int(torch.nonzero(count > 1)[0, 0])
        raise ValueError(f"prompt {bad} holds the placeholder token {int(count[bad])} times; use it once")
    pos = hit.to(torch.int64).argmax(1)
    return torch.where(count > 0, pos, torch.full_like(pos, -1))


def splice_placeholder(
    features_BTC: torch.Tensor,
    lengths_B: torch.Tensor,
    positions_B: torch.Tensor,
    vectors_NC: torch.Tensor,
    max_length: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace row `positions_B[b]` of each prompt by the N vectors; returns (features [B, T+N-1, C], lengths).

    Prompts with position -1 are unchanged. Rows past a prompt's new length are zero. One gather, no loop;
    the result is differentiable with respect to the vectors (and the features).
    """
    B, T, C = features_BTC.shape
    N = vectors_NC.shape[0]
    if vectors_NC.dim() != 2 or vectors_NC.shape[1] != C:
        raise ValueError(
            f"subject vectors have shape {tuple(vectors_NC.shape)}, text features have {C} channels"
        )
    if positions_B.shape != (B,) or lengths_B.shape != (B,):
        raise ValueError("positions and lengths need one entry per prompt")
    dev = features_BTC.device
    pos = positions_B.to(dev).long()[:, None]
    lens = lengths_B.to(dev).long()
    has = pos >= 0
    if bool((pos >= lens[:, None]).any()):
        raise ValueError("a placeholder position lies in the padding of its prompt (position >= length)")
    new_lens = lens + (N - 1) * has[:, 0].long()
    if max_length is not None and bool((new_lens > max_length).any()):
        raise ValueError(
            f"with {N} subject vectors a prompt grows to {int(new_lens.max())} text rows, more than {max_length}"
        )
    t = torch.arange(T + N - 1, device=dev)[None, :]
    in_vec = (t >= pos) & (t < pos + N)
    src = torch.where(t < pos, t, torch.where(in_vec, T + (t - pos), t - (N - 1)))
    src = torch.where(has, src, t)
    src = torch.where(t < new_lens[:, None], src, T + N)  # the appended zero row
    dtype = torch.promote_types(features_BTC.dtype, vectors_NC.dtype)
    ext = torch.cat(
        [
            features_BTC.to(dtype),
            vectors_NC.to(device=dev, dtype=dtype).unsqueeze(0).expand(B, N, C),
            features_BTC.new_zeros(B, 1, C, dtype=dtype),
        ],
        dim=1,
    )
    out = ext.gather(1, src.unsqueeze(-1).expand(B, T + N - 1, C))
    return out, new_lens.to(lengths_B.dtype)


class SubjectEmbedding(nn.Module):
    """N learned text-feature vectors of width Ct standing in for the placeholder token."""

    def __init__(self, num_vectors: int = 4, channels: int = 2048):
        super().__init__()
        if num_vectors < 1:
            raise ValueError(f"subject embedding: num_vectors must be at least 1, got {num_vectors}")
        if channels < 1:
            raise ValueError(f"subject embedding: channels must be at least 1, got {channels}")
        self.vectors = nn.Parameter(torch.zeros(num_vectors, channels))

    @property
    def num_vectors(self) -> int:
        return self.vectors.shape[0]

    @torch.no_grad()
    def init_from_features(self, class_features_TC: torch.Tensor) -> None:
        """Start every vector at the mean T5 output of the class word's tokens ([T, Ct], T >= 1)."""
        if class_features_TC.dim() != 2 or class_features_TC.shape[0] < 1:
            raise ValueError(
                f"class-word features must be [T >= 1, Ct], got {tuple(class_features_TC.shape)}"
            )
        if class_features_TC.shape[1] != self.vectors.shape[1]:
            raise ValueError(
                f"class-word features have {class_features_TC.shape[1]} channels, the embedding {self.vectors.shape[1]}"
            )
        self.vectors.copy_(class_features_TC.float().mean(0, keepdim=True).expand_as(self.vectors))

    def forward(
        self,
        features_BTC: torch.Tensor,
        lengths_B: torch.Tensor,
        positions_B: torch.Tensor,
        max_length: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return splice_placeholder(features_BTC, lengths_B, positions_B, self.vectors, max_length)

    def splice_text(self, text: _Text, positions_B: torch.Tensor, max_length: int | None = None) -> _Text:
        """The same splice on a dataclass with `features_BTC` and `lengths_B` fields (e.g. a TextBatch)."""
        feats, lens = self(_field(text, "features_BTC"), _field(text, "lengths_B"), positions_B, max_length)
        return dataclasses.replace(text, features_BTC=feats, lengths_B=lens)


def _field(obj: Any, name: str) -> torch.Tensor:
    if not dataclasses.is_dataclass(obj) or not hasattr(obj, name):
        raise TypeError(
            f"expected a dataclass with a {name!r} field (such as TextBatch), got {type(obj).__name__}"
        )
    return getattr(obj, name)
