"""FID / KID through torchmetrics with a DINO or CLIP feature network instead of Inception.

torchmetrics' default Inception-v3 needs torch-fidelity and a weight download, so varlit passes a
`feature` module: torchmetrics accepts any nn.Module mapping an image batch to [N, F] and reads F from
its `num_features` attribute. Numbers are therefore "FID in DINO (or CLIP) space", comparable between
varlit runs with the same backbone, not with Inception FIDs in papers.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from .backbones import ClipBackbone, DinoBackbone
from .metrics import autocast_context
from .preprocess import EVAL_SIZE, squash


class SquashedFeatures(nn.Module):
    """[-1, 1] images of any size -> squash to `eval_size` -> backbone features, float32 [N, F]."""

    def __init__(
        self,
        backbone: DinoBackbone | ClipBackbone,
        eval_size: int | None = EVAL_SIZE,
        bf16: bool | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.eval_size = eval_size
        self.bf16 = bf16
        self.num_features = backbone.num_features

    def forward(self, img_B3HW: Tensor) -> Tensor:
        x = img_B3HW.float() if self.eval_size is None else squash(img_B3HW, self.eval_size)
        with torch.no_grad(), autocast_context(x.device, self.bf16):
            return self.backbone(x).float()


def make_fid(
    backbone: DinoBackbone | ClipBackbone, eval_size: int | None = EVAL_SIZE, bf16: bool | None = None
):
    """FrechetInceptionDistance on `backbone` features; feed it [-1, 1] images; real features survive reset()."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(
        feature=SquashedFeatures(backbone, eval_size, bf16), reset_real_features=False
    )


def make_kid(
    backbone: DinoBackbone | ClipBackbone,
    subset_size: int = 50,
    subsets: int = 100,
    eval_size: int | None = EVAL_SIZE,
    bf16: bool | None = None,
):
    """KernelInceptionDistance on `backbone` features; `subset_size` must not exceed either set's size."""
    from torchmetrics.image.kid import KernelInceptionDistance

    with (
        warnings.catch_warnings()
    ):  # "will save all extracted features": expected, a few hundred images at most
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        return KernelInceptionDistance(
            feature=SquashedFeatures(backbone, eval_size, bf16),
            subsets=subsets,
            subset_size=subset_size,
            reset_real_features=False,
        )
