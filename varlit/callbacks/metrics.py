"""Lightning callback: subject metrics (DINO, CLIP-I, CLIP-T, PRES, optional DIV and FID/KID) on validation samples.

Interface it assumes of the LightningModule (duck-typed, nothing to inherit):

    def generate_validation_samples(self) -> varlit.eval.SubjectSamples

returning, on the module's device, the validation samples in [-1, 1] ([N, 3, H, W]) with one prompt per
sample (samples are grouped by prompt), the subject's reference photos ([R, 3, H, W] or a list of
[3, H, W]), optionally samples of the bare class prompt (`class_images`, for PRES) and optionally the text
CLIP-T should score each sample against (`texts`, e.g. the prompt with the placeholder token replaced by
the class word). The module decides seeds and prompts, so the sample-grid callback can share the samples.

At the end of every `every_n_validations`-th validation epoch (not during the sanity check unless asked)
it scores the samples and logs `{prefix}dino`, `clip_i`, `clip_t`, `pres` (with class samples), `div`
(when LPIPS is available offline), `fid` and `kid` (with `fid_reference_dir`) and, with `judge` set (the
world's judge), `judge_subject_sim`, `judge_subject_rate`, `judge_context_prob`/`_acc`, `judge_class_prob`/`_acc`,
`judge_leakage`, `judge_leakage_sim` and `judge_class_prior_acc` (see `varlit.eval.judge`) through
`pl_module.log_dict`, with sync_dist=True. The backbones live on the callback, not the module, so they stay out of checkpoints.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

from varlit.eval.backbones import CLIP_ID, DINO_ID
from varlit.eval.fid import make_fid, make_kid
from varlit.eval.metrics import SubjectMetrics, SubjectSamples, SubjectScores
from varlit.eval.preprocess import EVAL_SIZE, load_images

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})


def with_data_subject(samples: SubjectSamples, pl_module: pl.LightningModule) -> SubjectSamples:
    """The samples with the data module's subject name and class word (what the judge looks for), when the
    module did not set them and the trainer's data module has a resolved subject."""
    trainer = getattr(pl_module, "_trainer", None)
    subject = getattr(getattr(trainer, "datamodule", None), "subject", None)
    if subject is None or not hasattr(subject, "class_word"):
        return samples
    return dataclasses.replace(samples, subject=subject.name, class_word=subject.class_word)


class SubjectMetricsCallback(pl.Callback):
    """Scores `pl_module.generate_validation_samples()` with the subject metrics and logs the means.

    dino / clip: hub ids or local folders of the backbones (None switches one off). judge: "world-judge" or a
    judge.safetensors path (None, the default, switches the judge off; with it dino and clip may be None).
    lpips: try DIV (only
    works where torchvision and cached AlexNet weights exist; otherwise DIV is skipped with a message).
    fid_reference_dir: a folder of real images; when set, FID and KID (in `fid_backbone` feature space)
    compare all validation samples with it. metrics: a prebuilt SubjectMetrics (tests, notebooks); when
    given, dino / clip / dino_protocol / lpips / eval_size / batch_size are not used.
    """

    def __init__(
        self,
        dino: str | None = DINO_ID,
        clip: str | None = CLIP_ID,
        dino_protocol: Literal["arbooth", "processor"] = "arbooth",
        lpips: bool = True,
        every_n_validations: int = 1,
        eval_size: int | None = EVAL_SIZE,
        batch_size: int = 32,
        fid_reference_dir: str | None = None,
        fid_backbone: Literal["dino", "clip"] = "dino",
        kid_subset_size: int = 50,
        prefix: str = "val/",
        on_sanity_check: bool = False,
        metrics: SubjectMetrics | None = None,
        judge: str | None = None,
    ):
        super().__init__()
        if every_n_validations < 1:
            raise ValueError(f"every_n_validations must be >= 1, got {every_n_validations}")
        if fid_backbone not in ("dino", "clip"):
            raise ValueError(f"fid_backbone must be 'dino' or 'clip', got {fid_backbone!r}")
        if fid_reference_dir is not None and not Path(fid_reference_dir).is_dir():
            raise FileNotFoundError(f"fid_reference_dir: {fid_reference_dir} is not a folder")
        if metrics is None and dino is None and clip is None and judge is None:
            raise ValueError(
                "SubjectMetricsCallback: dino, clip and judge are all None; no metric left to log"
            )
        self.dino_id, self.clip_id, self.dino_protocol, self.lpips = dino, clip, dino_protocol, lpips
        self.judge_id = judge
        self.every_n_validations = every_n_validations
        self.eval_size = eval_size
        self.batch_size = batch_size
        self.fid_reference_dir = fid_reference_dir
        self.fid_backbone = fid_backbone
        self.kid_subset_size = kid_subset_size
        self.prefix = prefix
        self.on_sanity_check = on_sanity_check
        self.metrics = metrics
        self.fid: Any = None
        self.kid: Any = None
        self.num_fid_reference = 0
        self.validations_seen = 0
        self.last_scores: SubjectScores | None = None

    # ---- setup -------------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate"):
            return
        if not callable(getattr(pl_module, "generate_validation_samples", None)):
            raise TypeError(
                f"SubjectMetricsCallback needs {type(pl_module).__name__}.generate_validation_samples() "
                "-> varlit.eval.SubjectSamples"
            )
        if self.metrics is None:
            self.metrics = SubjectMetrics.from_pretrained(
                dino=self.dino_id,
                clip=self.clip_id,
                dino_protocol=self.dino_protocol,
                lpips=self.lpips,
                eval_size=self.eval_size,
                batch_size=self.batch_size,
                judge=self.judge_id,
            )
        if self.metrics.div_skipped:
            rank_zero_info(self.metrics.div_skipped)
        if self.fid_reference_dir is not None and self.fid is None:
            backbone = self.metrics.dino if self.fid_backbone == "dino" else self.metrics.clip
            if backbone is None:
                raise ValueError(f"fid_backbone={self.fid_backbone!r} but that backbone is switched off")
            self.fid = make_fid(backbone, self.metrics.eval_size, self.metrics.bf16)
            self.kid = make_kid(
                backbone, self.kid_subset_size, eval_size=self.metrics.eval_size, bf16=self.metrics.bf16
            )

    def _load_fid_reference(self, device: torch.device) -> None:
        """Real-image features go in once; the metrics keep them across reset()."""
        paths = sorted(
            p for p in Path(self.fid_reference_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
        )
        if len(paths) < 2:
            raise ValueError(
                f"fid_reference_dir: {self.fid_reference_dir} needs at least 2 images, has {len(paths)}"
            )
        for start in range(0, len(paths), self.batch_size):
            real = load_images(paths[start : start + self.batch_size], self.metrics.eval_size or EVAL_SIZE)
            real = real.to(device)
            self.fid.update(real, real=True)
            self.kid.update(real, real=True)
        self.num_fid_reference = len(paths)

    # ---- scoring -----------------------------------------------------------------------------------------
    def _distribution_metrics(self, images: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        self.fid.to(device)
        self.kid.to(device)
        if self.num_fid_reference == 0:
            self._load_fid_reference(device)
        if images.shape[0] < 2:
            rank_zero_info("FID/KID skipped: fewer than 2 validation samples")
            return {}
        self.fid.reset()
        self.kid.reset()
        for start in range(0, images.shape[0], self.batch_size):
            chunk = images[start : start + self.batch_size]
            self.fid.update(chunk, real=False)
            self.kid.update(chunk, real=False)
        self.kid.subset_size = min(self.kid_subset_size, images.shape[0], self.num_fid_reference)
        kid_mean, _ = self.kid.compute()
        return {"fid": self.fid.compute(), "kid": kid_mean}

    def score(self, pl_module: pl.LightningModule) -> SubjectScores:
        """Generate, score and return (without logging); the validation hook calls this."""
        samples = pl_module.generate_validation_samples()
        if not isinstance(samples, SubjectSamples):
            raise TypeError(
                f"{type(pl_module).__name__}.generate_validation_samples() must return varlit.eval.SubjectSamples, "
                f"got {type(samples).__name__}"
            )
        if self.metrics.judge is not None and samples.subject is None:
            samples = with_data_subject(samples, pl_module)
        self.metrics.to(pl_module.device)
        scores = self.metrics.score(samples)
        if self.fid is not None:
            scores.extra.update(
                self._distribution_metrics(samples.images.to(pl_module.device), pl_module.device)
            )
        return scores

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking and not self.on_sanity_check:
            return
        self.validations_seen += 1
        if self.validations_seen % self.every_n_validations != 0:
            return
        scores = self.score(pl_module)
        logged = {f"{self.prefix}{k}": v.float() for k, v in scores.scalars().items()}
        pl_module.log_dict(logged, on_step=False, on_epoch=True, sync_dist=True)
        self.last_scores = scores

    # ---- resume ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"validations_seen": self.validations_seen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations_seen = int(state_dict.get("validations_seen", 0))
