"""The frozen parts of a tuning run and the dtype policy of the student.

`FrozenEncoders` holds the VAE and T5 as plain attributes of the LightningModule: never in the optimizer, a
checkpoint, `.train()` or `.parameters()`. Their work on fixed data happens once, in the data module's cache.

The dtype policy is the official one: only transformer-block tensors may be half precision; everything outside
the blocks (embeddings, text projection, AdaLN condition, head) stays float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..models.infinity import Infinity, is_block_tensor
from ..models.text import TextEncoder
from ..models.vae import BSQVAE
from .subject_embedding import PLACEHOLDER


class FrozenEncoders:
    """The VAE (loaded with the base model) and T5 (loaded on first use, with the placeholder token added)."""

    def __init__(self, vae: BSQVAE, text_encoder_id: str, max_length: int):
        self.vae = vae.eval().requires_grad_(False)
        self.text_encoder_id = text_encoder_id
        self.max_length = max_length
        self.loaded_text_encoder: TextEncoder | None = None

    def text_encoder(self, on_gpu: Callable[[], bool]) -> TextEncoder:
        """T5, loaded on the first call: float16 when `on_gpu()`, like the released inference code, so cached
        features match `varlit sample`."""
        if self.loaded_text_encoder is None:
            te = TextEncoder.from_pretrained(
                self.text_encoder_id,
                dtype=torch.float16 if on_gpu() else torch.float32,
                max_length=self.max_length,
            )
            te.add_token(PLACEHOLDER)
            self.loaded_text_encoder = te
        return self.loaded_text_encoder

    def to(self, device: torch.device) -> None:
        self.vae.to(device)
        if self.loaded_text_encoder is not None:
            self.loaded_text_encoder.to(device)

    def offload_text_encoder(self, device: torch.device) -> None:
        """T5 is only needed to build the token cache: once that is done it leaves the accelerator."""
        if self.loaded_text_encoder is not None and device.type != "cpu":
            self.loaded_text_encoder.to("cpu")


def policy_dtypes(
    frozen: str, tuned: str, arbooth_compat: bool, device: torch.device, precision: str
) -> tuple[str, str]:
    """(frozen block dtype, tuned block dtype) names with `auto` resolved: frozen blocks in bf16 on GPU under
    bf16-mixed, tuned blocks in bf16 under arbooth_compat (the release's recipe), float32 otherwise."""
    if frozen == "auto":
        frozen = "bfloat16" if (device.type == "cuda" and "bf16" in precision) else "float32"
    if tuned == "auto":
        tuned = "bfloat16" if arbooth_compat else "float32"
    return frozen, tuned


def apply_precision(student: Infinity, trainable: set[str], frozen: torch.dtype, tuned: torch.dtype) -> None:
    """Frozen block tensors to `frozen`, tuned block tensors to `tuned`, every other tensor to float32.

    Casting keeps each Parameter object (the optimizer's references stay valid); an optimizer state
    restored afterwards is cast by torch to the parameters' dtype.
    """
    student.set_precision(frozen, keep=trainable)
    for name, p in student.named_parameters():
        if name in trainable:
            want = tuned if is_block_tensor(name) else torch.float32
            if p.dtype != want:
                p.data = p.data.to(want)
