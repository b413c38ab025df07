"""The world's frozen text encoder: a small random T5 and a Unigram tokenizer trained on the world's captions.

Both are built once by `make world` (seeded), saved as an ordinary Hugging Face folder and shipped with
the world, so the world reads prompts identically on every machine and loads like any local T5.
"""

from __future__ import annotations

from pathlib import Path

from ..models.text import TextEncoder, random_t5_encoder
from .scenes import all_captions
from .subjects import subject_prompts

TEXT_CHANNELS = 128
TEXT_MAXLEN = 32


def world_corpus() -> list[str]:
    """Every pretraining caption plus the subject prompts (without their placeholder)."""
    from .subjects import SUBJECT_NAMES

    extra = [p.replace("<placeholder> ", "") for n in SUBJECT_NAMES for p in subject_prompts(n)]
    return all_captions() + extra


def build_world_tokenizer():
    """A word-level tokenizer over the world's vocabulary: every world word is one token, others <unk>.

    (A Unigram model trained on so small a corpus falls back to single characters.)
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for line in world_corpus() for w in line.lower().split()})
    vocab = {t: i for i, t in enumerate(["<pad>", "</s>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def build_world_text_encoder(seed: int = 0) -> TextEncoder:
    """Random 2-layer T5 encoder (width 128) with room in its table for added tokens such as <placeholder>."""
    return random_t5_encoder(build_world_tokenizer(), TEXT_CHANNELS, seed, TEXT_MAXLEN, spare_rows=32)


def save_text_encoder(te: TextEncoder, out: str | Path) -> Path:
    """An ordinary Hugging Face folder (config, safetensors, tokenizer.json) that `TextEncoder` loads."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    te.encoder.save_pretrained(out, safe_serialization=True)
    te.tokenizer.save_pretrained(out)
    return out


def main_build_text_encoder(out: str = "runs/world/text_encoder", seed: int = 0) -> Path:
    """Build the world's T5 and tokenizer and save them to `out`."""
    path = save_text_encoder(build_world_text_encoder(seed), out)
    print(f"world text encoder -> {path}")
    return path
