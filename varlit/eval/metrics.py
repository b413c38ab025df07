"""Subject metrics of the reference protocol: DINO, CLIP-I, CLIP-T, PRES and (when LPIPS is available) DIV.

Definitions (ARBooth `tools/evaluate.py`); features are L2-normalised, "mean" is over every pair:

- DINO   = mean cos(dino(real_i), dino(gen_j)) over subject photos i x samples j of one prompt.
- CLIP-I = the same with CLIP image embeddings.
- CLIP-T = mean cos(clip_text(prompt), clip_image(gen_j)) over the samples of one prompt.
- PRES   = DINO between the subject photos and samples of the bare class prompt ("a photo of dog");
           lower = the class prior drifted less towards the subject.
- DIV    = mean LPIPS over unordered pairs of samples of one prompt (see `diversity`).
- judge_* = the same questions asked of the world's judge (`judge`: subject fidelity, prompt fidelity, drift).
Per-subject numbers are means over prompts of the per-prompt means (as the reference does).

Everything stays on the backbones' device: images are squashed and encoded in batches, under bf16
autocast on CUDA, and results stay 0-dim tensors until `SubjectScores.to_dict` moves them in one transfer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import CLIP_ID, DINO_ID, ClipBackbone, DinoBackbone
from .diversity import PairwiseDistance, build_lpips, mean_pairwise_distance
from .judge import (
    JUDGE_METRIC_NAMES,
    PROMPT_METRICS,
    JudgeBackbone,
    JudgeReading,
    class_prompt_metrics,
    prompt_metrics,
    subject_class_word,
    subject_head_index,
)
from .preprocess import EVAL_SIZE, check_images, squash_many
from .prompts import drop_placeholder

METRIC_NAMES = ("dino", "clip_i", "clip_t", "pres", "div")
ALL_METRIC_NAMES = METRIC_NAMES + JUDGE_METRIC_NAMES


def mean_cosine(a_NF: Tensor, b_MF: Tensor) -> Tensor:
    """Mean cosine similarity over all N x M pairs of rows (float32)."""
    a, b = F.normalize(a_NF.float(), dim=-1), F.normalize(b_MF.float(), dim=-1)
    return (a @ b.T).mean()


def text_image_cosine(img_NF: Tensor, text_F: Tensor) -> Tensor:
    """Cosine of every image embedding with one text embedding -> [N] (float32)."""
    return F.normalize(img_NF.float(), dim=-1) @ F.normalize(text_F.float(), dim=-1)


def autocast_context(device: torch.device, bf16: bool | None) -> contextlib.AbstractContextManager:
    """bf16 autocast: on CUDA by default (bf16=None), forced on/off otherwise."""
    enabled = device.type == "cuda" if bf16 is None else bf16
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@dataclass
class SubjectSamples:
    """What the metrics need for one subject; all images in [-1, 1].

    images: [N, 3, H, W] samples; prompts: the prompt of each (samples are grouped by it, in first-seen order);
    reference: the subject photos, [R, 3, H, W] or a list of [3, H, W] of any sizes;
    class_images: samples of the bare class prompt, for PRES (optional);
    texts: what CLIP-T compares each sample with (default: its prompt; e.g. the prompt without the
    learned placeholder token, which CLIP cannot read);
    subject / class_word: the subject's name and class word (the judge's metrics use them; see `judge`).
    """

    images: Tensor
    prompts: list[str]
    reference: Tensor | list[Tensor]
    class_images: Tensor | None = None
    texts: list[str] | None = None
    subject: str | None = None
    class_word: str | None = None

    def __post_init__(self) -> None:
        check_images(self.images, "SubjectSamples.images")
        n = self.images.shape[0]
        if n == 0:
            raise ValueError("SubjectSamples.images is empty")
        if len(self.prompts) != n:
            raise ValueError(f"SubjectSamples: {n} images but {len(self.prompts)} prompts")
        if self.texts is not None and len(self.texts) != n:
            raise ValueError(f"SubjectSamples: {n} images but {len(self.texts)} texts")
        if isinstance(self.reference, Tensor):
            check_images(self.reference, "SubjectSamples.reference")
        if len(self.reference) == 0:
            raise ValueError("SubjectSamples.reference holds no subject photos")
        if self.class_images is not None:
            check_images(self.class_images, "SubjectSamples.class_images")

    def groups(self) -> list[tuple[str, str, list[int]]]:
        """(prompt, CLIP-T text, sample indices) per distinct prompt, in first-seen order."""
        texts = self.texts if self.texts is not None else self.prompts
        index: dict[str, list[int]] = {}
        text_of: dict[str, str] = {}
        for i, (prompt, text) in enumerate(zip(self.prompts, texts)):
            if text_of.setdefault(prompt, text) != text:
                raise ValueError(
                    f"SubjectSamples: prompt {prompt!r} has two texts: {text_of[prompt]!r}, {text!r}"
                )
            index.setdefault(prompt, []).append(i)
        return [(p, text_of[p], idx) for p, idx in index.items()]


@dataclass
class PromptScores:
    """Metrics of the samples of one prompt (0-dim tensors; None when the backbone/LPIPS is absent)."""

    prompt: str
    text: str
    num_images: int
    dino: Tensor | None = None
    clip_i: Tensor | None = None
    clip_t: Tensor | None = None
    div: Tensor | None = None
    judge: dict[str, Tensor] = field(default_factory=dict)  # judge_* metrics defined for this prompt


@dataclass
class SubjectScores:
    """Per-prompt scores and their means over prompts; `div_skipped` says why DIV is None."""

    prompts: list[PromptScores]
    dino: Tensor | None = None
    clip_i: Tensor | None = None
    clip_t: Tensor | None = None
    pres: Tensor | None = None
    div: Tensor | None = None
    div_skipped: str | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)  # e.g. fid / kid from the callback
    judge: dict[str, Tensor] = field(default_factory=dict)  # judge_* metrics that are defined
    judge_subject: str | None = None  # the subject the judge's metrics refer to (see `judge`)

    def scalars(self) -> dict[str, Tensor]:
        """The overall metrics that exist, as on-device tensors (for `LightningModule.log_dict`)."""
        out = {k: getattr(self, k) for k in METRIC_NAMES if getattr(self, k) is not None}
        return {**out, **self.judge, **self.extra}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready floats: {"overall": {...}, "prompts": {prompt: {...}}, "div_skipped": ...}; one transfer."""
        names = [k for k in METRIC_NAMES if k != "pres"]
        judged = bool(self.judge)
        tensors: list[Tensor] = list(self.scalars().values())
        for p in self.prompts:
            tensors += [getattr(p, k) for k in names if getattr(p, k) is not None]
            tensors += [p.judge[k] for k in PROMPT_METRICS if k in p.judge]
        values = iter(torch.stack([t.detach().float().cpu() for t in tensors]).tolist() if tensors else [])
        overall = {k: next(values) for k in self.scalars()}
        prompts = {}
        for p in self.prompts:
            row: dict[str, Any] = {k: (next(values) if getattr(p, k) is not None else None) for k in names}
            if judged:
                row.update({k: (next(values) if k in p.judge else None) for k in PROMPT_METRICS})
            prompts[p.prompt] = {"text": p.text, "num_images": p.num_images, **row}
        out = {"overall": overall, "prompts": prompts, "div_skipped": self.div_skipped}
        if judged:
            out["judge_subject"] = self.judge_subject
        return out


@dataclass
class _Encoded:
    images: Tensor | None  # squashed, on the metrics' device (when kept)
    dino: Tensor | None
    clip: Tensor | None
    judge: JudgeReading | None = None


def _chunks(images: Tensor | Sequence[Tensor], size: int) -> Iterator[Tensor | Sequence[Tensor]]:
    for start in range(0, len(images), size):
        yield images[start : start + size]


class SubjectMetrics(nn.Module):
    """DINO / CLIP-I / CLIP-T / PRES / DIV for one subject's samples, batched on the backbones' device.

    A backbone left as None switches its metrics off (dino -> DINO and PRES; clip -> CLIP-I and CLIP-T;
    judge -> the judge_* metrics of `judge`, for subjects of varlit's world).
    `eval_size`: side every image is squashed to first (reference: 256); None feeds images as they are.
    `bf16`: autocast the backbones in bf16; None = on CUDA only.
    """

    def __init__(
        self,
        dino: DinoBackbone | None = None,
        clip: ClipBackbone | None = None,
        diversity: PairwiseDistance | None = None,
        div_skipped: str | None = None,
        eval_size: int | None = EVAL_SIZE,
        batch_size: int = 32,
        bf16: bool | None = None,
        judge: JudgeBackbone | None = None,
    ):
        super().__init__()
        if dino is None and clip is None and judge is None:
            raise ValueError("SubjectMetrics needs at least one backbone (dino, clip or judge)")
        if batch_size < 1:
            raise ValueError(f"SubjectMetrics: batch_size must be >= 1, got {batch_size}")
        self.dino = dino
        self.clip = clip
        self.judge = judge
        self.diversity = diversity
        self.div_skipped = None if diversity is not None else (div_skipped or "DIV skipped: no LPIPS given")
        self.eval_size = eval_size
        self.batch_size = batch_size
        self.bf16 = bf16

    @classmethod
    def from_pretrained(
        cls,
        dino: str | None = DINO_ID,
        clip: str | None = CLIP_ID,
        dino_protocol: Literal["arbooth", "processor"] = "arbooth",
        lpips: bool = True,
        eval_size: int | None = EVAL_SIZE,
        batch_size: int = 32,
        bf16: bool | None = None,
        judge: str | None = None,
    ) -> SubjectMetrics:
        """Backbones from hub ids or folders (None skips one); LPIPS only if it can run offline.
        `judge`: "world-judge" (the shipped world judge) or a judge.safetensors path."""
        diversity, reason = build_lpips() if lpips else (None, "DIV skipped: turned off (lpips=False)")
        return cls(
            dino=DinoBackbone.from_pretrained(dino, dino_protocol) if dino else None,
            clip=ClipBackbone.from_pretrained(clip) if clip else None,
            diversity=diversity,
            div_skipped=reason,
            eval_size=eval_size,
            batch_size=batch_size,
            bf16=bf16,
            judge=JudgeBackbone.from_pretrained(judge) if judge else None,
        )

    @property
    def device(self) -> torch.device:
        backbone = next(b for b in (self.dino, self.clip, self.judge) if b is not None)
        return next(backbone.parameters()).device

    def prepare(self, images: Tensor | Sequence[Tensor]) -> Tensor:
        """Move to the metrics' device and squash to `eval_size` -> [N, 3, S, S] float32 in [-1, 1]."""
        device = self.device
        moved = images.to(device) if isinstance(images, Tensor) else [im.to(device) for im in images]
        return squash_many(moved, self.eval_size)

    def _encode(
        self,
        images: Tensor | Sequence[Tensor],
        dino: bool = True,
        clip: bool = True,
        keep_images: bool = False,
        judge: bool = True,
    ) -> _Encoded:
        """Squash and encode in batches with the asked backbones; squashed images kept only for DIV."""
        use_dino, use_clip = dino and self.dino is not None, clip and self.clip is not None
        prepared, dino_feats, clip_feats, readings = [], [], [], []
        with torch.no_grad():
            for chunk in _chunks(images, self.batch_size):
                x = self.prepare(chunk)
                if keep_images:
                    prepared.append(x)
                if judge and self.judge is not None:  # float32: a small CNN, no autocast
                    readings.append(self.judge(x))
                with autocast_context(x.device, self.bf16):
                    if use_dino:
                        dino_feats.append(self.dino(x).float())
                    if use_clip:
                        clip_feats.append(self.clip.encode_images(x).float())
        return _Encoded(
            torch.cat(prepared) if prepared else None,
            torch.cat(dino_feats) if dino_feats else None,
            torch.cat(clip_feats) if clip_feats else None,
            JudgeReading.cat(readings) if readings else None,
        )

    def dino_features(self, images: Tensor | Sequence[Tensor]) -> Tensor:
        if self.dino is None:
            raise RuntimeError("SubjectMetrics has no DINO backbone")
        return self._encode(images, clip=False, judge=False).dino

    def clip_image_features(self, images: Tensor | Sequence[Tensor]) -> Tensor:
        if self.clip is None:
            raise RuntimeError("SubjectMetrics has no CLIP backbone")
        return self._encode(images, dino=False, judge=False).clip

    def clip_text_features(self, texts: Sequence[str]) -> Tensor:
        if self.clip is None:
            raise RuntimeError("SubjectMetrics has no CLIP backbone")
        feats = []
        with torch.no_grad(), autocast_context(self.device, self.bf16):
            for chunk in _chunks(list(texts), self.batch_size):
                feats.append(self.clip.encode_text(chunk).float())
        return torch.cat(feats)

    def pres(self, reference: Tensor | Sequence[Tensor], class_images: Tensor) -> Tensor:
        """PRES alone: DINO between the subject photos and class-prompt samples."""
        return mean_cosine(self.dino_features(reference), self.dino_features(class_images))

    def score(self, samples: SubjectSamples) -> SubjectScores:
        groups = samples.groups()
        ref = self._encode(samples.reference)
        subject_idx, judge_subject = (
            subject_head_index(samples.subject, ref.judge) if ref.judge is not None else (0, None)
        )
        gen = self._encode(samples.images, keep_images=self.diversity is not None)
        text_feats = (
            self.clip_text_features([text for _, text, _ in groups]) if self.clip is not None else None
        )
        per_prompt = []
        for g, (prompt, text, idx) in enumerate(groups):
            rows = torch.tensor(idx, device=self.device)
            ps = PromptScores(prompt=prompt, text=text, num_images=len(idx))
            if gen.dino is not None:
                ps.dino = mean_cosine(ref.dino, gen.dino[rows])
            if gen.clip is not None:
                ps.clip_i = mean_cosine(ref.clip, gen.clip[rows])
                ps.clip_t = text_image_cosine(gen.clip[rows], text_feats[g]).mean()
            if self.diversity is not None:
                with torch.no_grad():
                    ps.div = mean_pairwise_distance(gen.images[rows], self.diversity, self.batch_size)
            if gen.judge is not None:
                ps.judge = prompt_metrics(
                    ref.judge, gen.judge.rows(rows), drop_placeholder(prompt), subject_idx
                )
            per_prompt.append(ps)

        def over_prompts(name: str) -> Tensor | None:
            values = [getattr(p, name) for p in per_prompt if getattr(p, name) is not None]
            return torch.stack(values).mean() if values else None

        def over_judge(name: str) -> Tensor | None:
            values = [p.judge[name] for p in per_prompt if name in p.judge]
            return torch.stack(values).mean() if values else None

        pres, judge = None, {}
        if samples.class_images is not None and (self.dino is not None or self.judge is not None):
            cls = self._encode(samples.class_images, clip=False)
            if cls.dino is not None:
                pres = mean_cosine(ref.dino, cls.dino)
        if self.judge is not None:
            judge = {k: v for k in PROMPT_METRICS if (v := over_judge(k)) is not None}
            if samples.class_images is not None:
                word = subject_class_word(judge_subject, samples.class_word)
                judge.update(class_prompt_metrics(ref.judge, cls.judge, subject_idx, word))
            judge = {k: judge[k] for k in JUDGE_METRIC_NAMES if k in judge}  # one fixed order
        div = over_prompts("div")
        div_skipped = self.div_skipped
        if self.diversity is not None and div is None:
            div_skipped = "DIV skipped: every prompt has fewer than 2 samples"
        return SubjectScores(
            prompts=per_prompt,
            dino=over_prompts("dino"),
            clip_i=over_prompts("clip_i"),
            clip_t=over_prompts("clip_t"),
            pres=pres,
            div=div,
            div_skipped=div_skipped,
            judge=judge,
            judge_subject=judge_subject if self.judge is not None else None,
        )
