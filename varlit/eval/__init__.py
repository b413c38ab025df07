"""Evaluation: subject metrics (DINO, CLIP-I, CLIP-T, PRES, DIV), FID/KID, and the reference preprocessing.

Importing this package loads torch only; transformers and torchmetrics are imported when a backbone or
an FID/KID metric is built.
"""

from .backbones import CLIP_ID, DINO_ID, BackboneLoadError, ClipBackbone, DinoBackbone
from .clipscore import clip_score_metric
from .diversity import build_lpips, mean_pairwise_distance
from .fid import SquashedFeatures, make_fid, make_kid
from .metrics import (
    PromptScores,
    SubjectMetrics,
    SubjectSamples,
    SubjectScores,
    mean_cosine,
    text_image_cosine,
)
from .preprocess import EVAL_SIZE, ImagePreprocess, load_image, load_images, squash

__all__ = [
    "CLIP_ID",
    "DINO_ID",
    "EVAL_SIZE",
    "BackboneLoadError",
    "ClipBackbone",
    "DinoBackbone",
    "ImagePreprocess",
    "PromptScores",
    "SquashedFeatures",
    "SubjectMetrics",
    "SubjectSamples",
    "SubjectScores",
    "build_lpips",
    "clip_score_metric",
    "load_image",
    "load_images",
    "make_fid",
    "make_kid",
    "mean_cosine",
    "mean_pairwise_distance",
    "squash",
    "text_image_cosine",
]
