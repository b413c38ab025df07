"""Text conditioning: a padded batch of T5 features, and the frozen T5 encoder that produces it.

Infinity reads the T5 `last_hidden_state` of the valid tokens only (the official code packs them); here
the batch stays padded with explicit lengths, and padded rows are zero and never attended to.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from .hub import HubUnavailableError, local_only, missing_error
from .loading import CheckpointError
from .tiny_text import TINY_T5_ID, build_tiny_tokenizer, random_t5_model

__all__ = ["HubUnavailableError", "TextBatch", "TextEncoder", "build_tiny_text_encoder", "random_t5_encoder"]


@dataclass
class TextBatch:
    """T5 features of a batch of prompts, padded: rows t >= lengths_B[i] are padding."""

    features_BTC: torch.Tensor
    lengths_B: torch.Tensor

    def __post_init__(self) -> None:
        if self.features_BTC.dim() != 3:
            raise ValueError(f"text features must be [B, T, C], got shape {tuple(self.features_BTC.shape)}")
        if self.lengths_B.shape != (self.features_BTC.shape[0],):
            raise ValueError("text lengths must have one entry per prompt")

    @property
    def batch_size(self) -> int:
        return self.features_BTC.shape[0]

    @property
    def channels(self) -> int:
        return self.features_BTC.shape[2]

    def mask_BT(self) -> torch.Tensor:
        """True at valid (non-padding) rows."""
        t = torch.arange(self.features_BTC.shape[1], device=self.features_BTC.device)
        return t[None, :] < self.lengths_B.to(t.device)[:, None]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextBatch:
        return TextBatch(self.features_BTC.to(device=device, dtype=dtype), self.lengths_B.to(device))

    def index(self, idx: torch.Tensor | list[int] | slice) -> TextBatch:
        return TextBatch(self.features_BTC[idx], self.lengths_B[idx])

    def trimmed(self) -> TextBatch:
        """Drop padding columns beyond the longest prompt (cheaper attention)."""
        t = int(self.lengths_B.max())
        return TextBatch(self.features_BTC[:, :t], self.lengths_B)

    @staticmethod
    def cat(batches: list[TextBatch]) -> TextBatch:
        t = max(b.features_BTC.shape[1] for b in batches)
        feats = [nn.functional.pad(b.features_BTC, (0, 0, 0, t - b.features_BTC.shape[1])) for b in batches]
        return TextBatch(torch.cat(feats), torch.cat([b.lengths_B for b in batches]))


class TextEncoder(nn.Module):
    """Frozen T5 encoder + tokenizer (google/flan-t5-xl for the released Infinity models)."""

    def __init__(self, encoder: nn.Module, tokenizer, max_length: int = 512):
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, dtype: torch.dtype = torch.float32, max_length: int = 512
    ) -> TextEncoder:
        """Load from a local folder or a hub id; one clear error when it is not available offline.

        The id `tiny-t5` builds the random offline encoder used by the `tiny` preset.
        """
        from transformers import AutoTokenizer, T5EncoderModel

        if name_or_path == TINY_T5_ID:
            return build_tiny_text_encoder(max_length=max_length)

        local = os.path.isdir(name_or_path) or local_only()  # no retries against an unreachable hub
        try:
            # legacy=True: the T5 tokenisation the released models were run with
            tok = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local, legacy=True)
            enc = T5EncoderModel.from_pretrained(name_or_path, dtype=dtype, local_files_only=local)
        except OSError as err:
            if not local:
                raise HubUnavailableError(
                    f"cannot load text encoder {name_or_path!r}: {err}".split("\n")[0]
                ) from None
            raise missing_error(name_or_path, name_or_path, "--text_encoder", "text encoder") from None
        except (
            Exception
        ) as err:  # a pickle weights file (refused by weights_only), a damaged one, a bad config
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise CheckpointError(
                f"text encoder {name_or_path}: cannot load it ({type(err).__name__}: {first[:160]}); "
                "give a folder with model.safetensors (--text_encoder)"
            ) from None
        return cls(enc, tok, max_length=max_length)

    @property
    def channels(self) -> int:
        return self.encoder.config.d_model

    @torch.no_grad()
    def add_token(self, token: str) -> int:
        """Register a new special token (e.g. `<placeholder>`) once; returns its id.

        A new embedding row, if the table needs one, is the mean of the existing rows: deterministic,
        so cached features stay valid across runs (transformers' default resize samples at random).
        """
        if token in self.tokenizer.get_vocab():
            return self.tokenizer.convert_tokens_to_ids(token)
        self.tokenizer.add_special_tokens({"additional_special_tokens": [token]})
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        table = self.encoder.get_input_embeddings()
        if token_id >= table.weight.shape[0]:
            self.encoder.resize_token_embeddings(token_id + 1, mean_resizing=False)
            table = self.encoder.get_input_embeddings()
            table.weight[token_id] = table.weight[:token_id].mean(0)
        return token_id

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        if not prompts:
            raise ValueError("empty prompt list: give at least one prompt")
        return self.tokenizer(
            list(prompts), max_length=self.max_length, padding="longest", truncation=True, return_tensors="pt"
        )

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextBatch:
        """Features of the valid tokens (padding to the longest prompt does not change them: it is masked)."""
        tokens = self.tokenize(prompts)
        device = next(self.encoder.parameters()).device
        ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
        feats = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        feats = feats * mask[..., None]
        return TextBatch(feats, mask.sum(1).long())


def random_t5_encoder(
    tokenizer, channels: int = 128, seed: int = 0, max_length: int = 32, spare_rows: int = 64
) -> TextEncoder:
    """Random 2-layer T5 encoder of width `channels` for `tokenizer` (deterministic for a seed).

    `spare_rows` leaves room in the embedding table for added tokens such as <placeholder>.
    """
    return TextEncoder(
        random_t5_model(tokenizer, channels, seed, spare_rows), tokenizer, max_length=max_length
    )


def build_tiny_text_encoder(channels: int = 128, seed: int = 0, max_length: int = 32) -> TextEncoder:
    """The tiny preset's T5: random weights, tokenizer trained on the spot (`tiny_text`)."""
    return random_t5_encoder(build_tiny_tokenizer(), channels, seed, max_length, spare_rows=64)
