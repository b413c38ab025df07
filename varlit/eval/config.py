"""`EvalConfig`: the `eval:` section of an experiment config (read by `varlit eval`).

Kept in its own light module so the `varlit fit` parser can accept (and check) the same section of the
shared YAML files without importing the runner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from varlit.models.sampler import SamplingConfig

from .backbones import CLIP_ID, DINO_ID
from .preprocess import EVAL_SIZE


def _eval_sampling() -> SamplingConfig:
    return SamplingConfig(cfg=4.0, tau=0.5, top_k=900, top_p=0.97)


@dataclass
class EvalConfig:
    """The DreamBench protocol of `varlit eval` (defaults: DESIGN.md §1, with 4 seeds instead of the paper's 8).

    Args:
        subjects: DreamBench subject names (photos under `data.dreambench_root`); default: the data
            config's subject (its `subject`, or its `subject_dir` + `class_word`).
        adapters: one adapter path per subject, or one pattern for all with fields {subject}, {run} (run.name)
            and {root} (run.root), e.g. "runs/sweep/{subject}/adapter.safetensors"; "base" evaluates the
            base model without an adapter (prompts then drop the placeholder). Default
            "{root}/{run}/adapter.safetensors".
        prompts: templates with one `{}` where "<placeholder> {class}" goes (DreamBench / ARBooth style);
            default: DreamBench's 25 object or live templates, by the subject's class; for a subject of
            varlit's world, one template per world context its photos never show ("a photo of a {} in the
            snow", ...).
        seeds: one sample per prompt and seed (the paper uses 8: 0..7).
        num_class_samples: samples of the bare class prompt "a photo of {class}" ("a photo of a {class}" for a
            world subject) for PRES and the judge's drift metrics (0 skips them).
        sampling: cfg, tau, top_k, top_p of every sample.
        batch_size: prompts sampled together (part of the images' fingerprint: batch mates share one RNG).
            4 keeps Infinity-2B's KV cache (about 5.5 GB per prompt with CFG, bf16) within a 40 GB GPU.
        dino: DINO backbone hub id or folder; "tiny-dino" = offline random stand-in; null skips DINO and PRES.
        clip: CLIP backbone hub id or folder; "tiny-clip" = offline random stand-in; null skips CLIP-I/T.
        judge: the world's judge as a backbone: "world-judge" (varlit/world/weights/judge.safetensors) or a
            judge.safetensors path; null (default) skips the judge_* metrics. With a judge, dino and clip
            may both be null.
        dino_protocol: "arbooth" feeds DINO the squashed [-1, 1] image as the reference does; "processor"
            uses the checkpoint's own preprocessing.
        lpips: try DIV (needs torchvision and cached AlexNet weights; skipped with a reason otherwise).
        clip_t_text: "class" scores CLIP-T against the prompt with the class word in the subject's place;
            "arbooth_compat" against the literal template ("a {} on the beach"), as the released script did.
        eval_size: side every image is squashed to before the backbones (reference: 256).
        metrics_batch_size: images per backbone forward.
        out: output folder; default "<run.root>/<run.name>/eval" (the command's --out wins).
        device: auto, cpu, cuda, cuda:1 ...
        dtype: auto (bf16 on GPU, float32 on CPU), float32, bfloat16.
    """

    subjects: list[str] | None = None
    adapters: list[str] | str | None = None
    prompts: list[str] | None = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    num_class_samples: int = 4
    sampling: SamplingConfig = field(default_factory=_eval_sampling)
    batch_size: int = 4
    dino: str | None = DINO_ID
    clip: str | None = CLIP_ID
    judge: str | None = None
    dino_protocol: Literal["arbooth", "processor"] = "arbooth"
    lpips: bool = True
    clip_t_text: Literal["class", "arbooth_compat"] = "class"
    eval_size: int = EVAL_SIZE
    metrics_batch_size: int = 32
    out: str | None = None
    device: str = "auto"
    dtype: str = "auto"

    def check(self) -> None:
        """Field-level checks (the runner checks subjects, adapters and prompts against the data)."""
        if not self.seeds:
            raise ValueError("eval.seeds is empty; give at least one seed, e.g. [0, 1, 2, 3]")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"eval.seeds lists a seed twice: {self.seeds}")
        if self.num_class_samples < 0:
            raise ValueError(f"eval.num_class_samples must be >= 0, got {self.num_class_samples}")
        for name in ("batch_size", "metrics_batch_size", "eval_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"eval.{name} must be >= 1, got {getattr(self, name)}")
        if self.dino is None and self.clip is None and self.judge is None:
            raise ValueError(
                "eval.dino, eval.clip and eval.judge are all null: no metric left to compute "
                "(for a world subject set eval.judge=world-judge)"
            )
        if self.clip_t_text not in ("class", "arbooth_compat"):
            raise ValueError(
                f"eval.clip_t_text must be 'class' or 'arbooth_compat', got {self.clip_t_text!r}"
            )
        if self.subjects is not None and not self.subjects:
            raise ValueError("eval.subjects is an empty list; leave it out to use the data config's subject")
