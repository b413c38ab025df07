"""Offline stand-ins for the metric backbones: tiny random ViT ("tiny-dino") and CLIP ("tiny-clip").

They let `varlit eval` run on a machine without a network (experiments/tiny.yaml, tests): same code path as
the real backbones, deterministic weights from a seed, and a CLIP tokenizer whose BPE merges are learned on
the spot from a fixed corpus. Their scores are NOT DINO / CLIP scores (random features); every
output computed with them is labelled as such (`is_tiny`).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import CLIPModel, CLIPTokenizer, ViTModel

TINY_DINO_ID = "tiny-dino"
TINY_CLIP_ID = "tiny-clip"
TINY_IDS = frozenset({TINY_DINO_ID, TINY_CLIP_ID})
TINY_NOTE = "random-initialised tiny backbone: its numbers only exercise the code, they are not scores"

# Prompt-like text the tiny BPE learns its merges from (DreamBench-style words).
_CORPUS = (
    "a photo of a dog on the beach",
    "a photo of a cat in the snow with a mountain in the background",
    "a red toy in the jungle on a cobblestone street",
    "a teapot on top of a wooden floor with a city in the background",
    "a backpack on top of pink fabric with a blue house in the background",
    "a purple shiny wet cube shaped vase on top of a purple rug in a forest",
    "a dog wearing a santa hat, a red hat, a rainbow scarf and pink glasses",
    "a cat in a chef outfit, a firefighter outfit, a police outfit, a purple wizard outfit",
    "a sneaker floating on top of water, floating in an ocean of milk",
    "a clock with the eiffel tower in the background, a candle on top of a mirror",
    "a plushie on top of green grass with sunflowers around it, on top of a dirt road",
    "a bowl with a tree and autumn leaves in the background, a wheat field, a white rug",
)
_NUM_MERGES = 200


def is_tiny(backbone_id: str | None) -> bool:
    return backbone_id in TINY_IDS


def learn_merges(corpus: tuple[str, ...], num_merges: int) -> list[tuple[str, str]]:
    """Plain BPE on the corpus words (CLIP style: the last symbol of a word carries "</w>").

    Ties go to the lexicographically smallest pair, so the merges are the same on every machine (the
    `tokenizers` trainer breaks ties by hash order, which varies between processes).
    """
    counts = Counter(w for line in corpus for w in re.findall(r"[a-z]+|[^\sa-z]", line.lower()))
    words = {tuple(w[:-1]) + (w[-1] + "</w>",): n for w, n in counts.items()}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, n in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        merged = {}
        for symbols, n in words.items():
            out, i = [], 0
            while i < len(symbols):
                if symbols[i : i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = n
        words = merged
    return merges


def build_tiny_clip_tokenizer(num_merges: int = _NUM_MERGES) -> CLIPTokenizer:
    """A CLIP BPE tokenizer: every byte symbol (alone and word-final) plus merges learned from `_CORPUS`."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    merges = learn_merges(_CORPUS, num_merges)
    symbols = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    # Every byte symbol gets an id (alone and word-final) so no input falls back to the unknown token.
    for token in [*symbols, *(s + "</w>" for s in symbols), *(a + b for a, b in merges)]:
        vocab.setdefault(token, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges)


def build_tiny_clip(seed: int = 0) -> tuple[CLIPModel, CLIPTokenizer]:
    """Random 2-layer CLIP (width 32, 32 px images in 8 px patches, 16-d projections) and its tokenizer."""
    from transformers import CLIPConfig, CLIPModel

    tokenizer = build_tiny_clip_tokenizer()
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    return model.eval(), tokenizer


def build_tiny_vit(seed: int = 0) -> ViTModel:
    """Random 2-layer ViT (width 32, 16 px patches like ViT-S/16; position embeddings interpolate)."""
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=16,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ViTModel(config, add_pooling_layer=False)
    return model.eval()
