"""A tiny random T5 encoder with a tokenizer trained on the spot: offline text conditioning for tests/demo.

The tokenizer is a Unigram model (like T5's SentencePiece) trained with the `tokenizers` library on a
fixed corpus of prompt-like sentences, so it is built identically on every machine without a download.

Only the Hugging Face parts live here (tokenizer, random T5 model), so this module sits below `text`:
`text.TextEncoder.from_pretrained("tiny-t5")` wraps them, and `text.build_tiny_text_encoder` /
`text.random_t5_encoder` give the wrapped encoder.
"""

from __future__ import annotations

import torch

TINY_T5_ID = "tiny-t5"

_CORPUS = [
    "a photo of a dog",
    "a photo of a cat on the beach",
    "a backpack in the jungle with a city in the background",
    "a teapot on top of a wooden floor",
    "a cube shaped toy in the snow",
    "a red clock with a mountain in the background",
    "a dog wearing a santa hat floating in an ocean of milk",
    "a purple sneaker on top of a pink fabric next to a green vase",
    "a cat in a chef outfit sitting on a cobblestone street",
    "a shiny candle with the eiffel tower in the background",
    "a bear plushie on the beach, a wolf plushie in the snow, a duck toy on a bed",
    "a monster toy, a robot toy, a rc car, a can, a bowl with berries, sunglasses, a boot",
    "a sloth plushie, a poop emoji, a cartoon, a vase, a colorful sneaker, a backpack dog",
    "in the style of a painting, a wet dog, a cube, a rainbow, a police outfit, a firefighter",
]


def build_tiny_tokenizer(vocab_size: int = 256):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def random_t5_model(tokenizer, channels: int = 128, seed: int = 0, spare_rows: int = 64):
    """Random 2-layer T5 encoder model of width `channels` for `tokenizer` (deterministic for a seed).

    `spare_rows` leaves room in the embedding table for added tokens such as <placeholder>.
    """
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer) + spare_rows,
        d_model=channels,
        d_kv=max(channels // 4, 8),
        d_ff=channels * 2,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return T5EncoderModel(config)
