"""The world's judge as a metric backbone (`world-judge`): DreamBench's metrics, read by a classifier.

On the world (`varlit.world`) DINO and CLIP are the wrong yardsticks: they never saw its 64 px scenes. The
judge did: it predicts class, colour, context and subject of a world image, and its embedding plays the role
of DINO / CLIP image features. The metrics (names as logged; all in [0, 1] except the cosines):

- subject fidelity (DINO / CLIP-I analogue)
  - `judge_subject_sim`: mean cosine of judge embeddings over subject photos x samples of one prompt.
  - `judge_subject_rate`: share of samples whose subject head picks the subject.
- prompt fidelity (CLIP-T analogue); the class and the context are parsed from the prompt text with the
  placeholder removed (a class word and a context phrase of the world); a prompt without one skips it
  - `judge_context_prob` / `judge_context_acc`: mean judge probability of the prompt's context / share of
    samples whose context head picks it.
  - `judge_class_prob` / `judge_class_acc`: the same for the prompt's class.
- drift (PRES analogue), on samples of the bare class prompt ("a photo of a ball")
  - `judge_leakage`: share of class-prompt samples the judge calls the subject (lower = less leakage).
  - `judge_leakage_sim`: mean judge-embedding cosine of class-prompt samples with the subject photos.
  - `judge_class_prior_acc`: share of class-prompt samples the judge reads as the class (the prior kept).

Per subject, the prompt metrics are means over prompts of per-prompt means (as DINO / CLIP are). Which
subject counts is `SubjectSamples.subject` when that names a world subject, else the judge's majority vote
on the subject photos; the class of the bare class prompt is `SubjectSamples.class_word`, else the subject's.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import BackboneLoadError

WORLD_JUDGE_ID = "world-judge"
JUDGE_FILE = "judge.safetensors"
PROMPT_METRICS = (
    "judge_subject_sim",
    "judge_subject_rate",
    "judge_context_prob",
    "judge_context_acc",
    "judge_class_prob",
    "judge_class_acc",
)
CLASS_METRICS = ("judge_leakage", "judge_leakage_sim", "judge_class_prior_acc")
JUDGE_METRIC_NAMES = PROMPT_METRICS + CLASS_METRICS


def judge_path(id_or_path: str) -> Path:
    """`world-judge` -> the shipped `varlit/world/weights/judge.safetensors`; otherwise a `.safetensors`
    file, or a folder holding `judge.safetensors` (its `judge.json`, if beside it, gives the config)."""
    if id_or_path == WORLD_JUDGE_ID:
        from varlit.models.presets import WORLD_DIR

        path = WORLD_DIR / JUDGE_FILE
        if not path.is_file():
            raise BackboneLoadError(
                f"the world judge {path} is missing; build it with `make world` (or `varlit world judge`) "
                "or pass the path of a judge.safetensors"
            )
        return path
    path = Path(id_or_path).expanduser()
    if path.is_dir():
        path = path / JUDGE_FILE
    if not path.is_file():
        raise BackboneLoadError(
            f"judge {id_or_path!r}: {path} is not a file; give '{WORLD_JUDGE_ID}' or a judge.safetensors path"
        )
    return path


@dataclass
class JudgeReading:
    """The judge on a batch: L2-normalised embeddings [N, E] and softmax probabilities per head [N, n]."""

    embedding: Tensor
    probs: dict[str, Tensor]

    def top(self, head: str) -> Tensor:
        return self.probs[head].argmax(-1)

    def rows(self, idx: Tensor) -> JudgeReading:
        return JudgeReading(self.embedding[idx], {k: v[idx] for k, v in self.probs.items()})

    @staticmethod
    def cat(parts: list[JudgeReading]) -> JudgeReading:
        return JudgeReading(
            torch.cat([p.embedding for p in parts]),
            {k: torch.cat([p.probs[k] for p in parts]) for k in parts[0].probs},
        )


class JudgeBackbone(nn.Module):
    """A frozen `varlit.world.judge.Judge`: [-1, 1] images of any size -> `JudgeReading` (float32)."""

    def __init__(self, judge: nn.Module, source: str = "in memory"):
        super().__init__()
        self.judge = judge.eval().requires_grad_(False)
        self.source = source

    @classmethod
    def from_pretrained(cls, id_or_path: str = WORLD_JUDGE_ID) -> JudgeBackbone:
        from varlit.world.judge import load_judge

        path = judge_path(id_or_path)
        try:
            return cls(load_judge(path), str(path))
        except (OSError, ValueError, RuntimeError) as err:  # broken file or a state dict of another judge
            raise BackboneLoadError(f"cannot load the judge {path}: {str(err).splitlines()[0]}") from err

    @torch.no_grad()
    def forward(self, img_B3HW: Tensor) -> JudgeReading:
        param = next(self.judge.parameters())
        emb, logits = self.judge(img_B3HW.to(param.device, param.dtype))
        return JudgeReading(
            F.normalize(emb.float(), dim=-1), {k: v.float().softmax(-1) for k, v in logits.items()}
        )


def _phrase_pattern(phrases: list[str]) -> re.Pattern[str]:
    alternatives = sorted(phrases, key=len, reverse=True)  # the longest phrase wins where two overlap
    return re.compile(r"\b(" + "|".join(re.escape(p) for p in alternatives) + r")\b")


def parse_world_prompt(text: str) -> tuple[str | None, str | None]:
    """(class, context id) a world prompt names, e.g. "a photo of a ball on the beach" -> ("ball", "beach").

    The placeholder must already be removed. A prompt naming no world class / context, or more than one,
    gives None for it (that metric is then not defined for the prompt)."""
    from varlit.world.scenes import CLASSES, CONTEXTS

    lowered = " ".join(text.lower().split())
    classes = set(_phrase_pattern(list(CLASSES)).findall(lowered))
    by_phrase = {phrase: cid for cid, phrase in CONTEXTS.items()}
    contexts = {by_phrase[p] for p in _phrase_pattern(list(by_phrase)).findall(lowered)}
    cls = next(iter(classes)) if len(classes) == 1 else None
    context = next(iter(contexts)) if len(contexts) == 1 else None
    return cls, context


def subject_head_index(subject: str | None, reference: JudgeReading) -> tuple[int, str | None]:
    """(subject head index, subject name): the named world subject, else the judge's majority vote on the
    subject photos; (0, None) when that vote is "no subject"."""
    from varlit.world.subjects import SUBJECT_NAMES

    if subject in SUBJECT_NAMES:
        return SUBJECT_NAMES.index(subject) + 1, subject
    votes = Counter(reference.top("subject").tolist())
    index = min(votes, key=lambda k: (-votes[k], k))  # most votes; ties -> the lower index
    return index, (SUBJECT_NAMES[index - 1] if index > 0 else None)


def class_index(class_word: str | None) -> int | None:
    from varlit.world.scenes import CLASSES

    return CLASSES.index(class_word) if class_word in CLASSES else None


def prompt_metrics(
    reference: JudgeReading, samples: JudgeReading, prompt: str, subject_idx: int
) -> dict[str, Tensor]:
    """The per-prompt judge metrics of one prompt's samples (`prompt` without the placeholder)."""
    from varlit.world.scenes import CONTEXT_NAMES

    out = {"judge_subject_sim": (reference.embedding @ samples.embedding.T).mean()}
    if subject_idx > 0:
        out["judge_subject_rate"] = (samples.top("subject") == subject_idx).float().mean()
    cls, context = parse_world_prompt(prompt)
    for head, label in (
        ("context", CONTEXT_NAMES.index(context) if context else None),
        ("class", class_index(cls)),
    ):
        if label is None:
            continue
        probs = samples.probs["cls" if head == "class" else head]
        out[f"judge_{head}_prob"] = probs[:, label].mean()
        out[f"judge_{head}_acc"] = (probs.argmax(-1) == label).float().mean()
    return out


def class_prompt_metrics(
    reference: JudgeReading, class_samples: JudgeReading, subject_idx: int, class_word: str | None
) -> dict[str, Tensor]:
    """Drift on bare class-prompt samples: leakage of the subject and the class prior kept."""
    out = {"judge_leakage_sim": (reference.embedding @ class_samples.embedding.T).mean()}
    if subject_idx > 0:
        out["judge_leakage"] = (class_samples.top("subject") == subject_idx).float().mean()
    label = class_index(class_word)
    if label is not None:
        out["judge_class_prior_acc"] = (class_samples.top("cls") == label).float().mean()
    return out


def subject_class_word(subject: str | None, class_word: str | None) -> str | None:
    """The class of the bare class prompt: the given class word, else the world subject's class."""
    from varlit.world.subjects import SUBJECTS

    if class_word is not None:
        return class_word
    return SUBJECTS[subject].cls if subject in SUBJECTS else None
