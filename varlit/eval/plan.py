"""Planning `varlit eval` (step 1 of `runner`): every subject, its photos, adapter file and prompts.

No model work happens here, so bad input (a missing adapter, a subject named twice, an adapter trained on
another preset) fails in seconds, before anything is loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.datamodule import SubjectDataModule
from ..data.dreambench import LIVE_CLASSES
from ..data.subjects import SubjectPhoto
from ..data.world_subjects import (
    WORLD_CLASS_TEMPLATE,
    is_world_preset,
    own_eval_templates,
    world_eval_templates,
    world_subject_name,
)
from ..loggers import RunConfig
from ..models.loading import CheckpointError
from ..pipeline import slugify
from ..tuning.adapter import read_adapter_meta
from .config import EvalConfig
from .prompts import (
    EvalPrompt,
    check_templates,
    class_prompt,
    default_templates,
    drop_placeholder,
    make_prompt,
)

log = logging.getLogger(__name__)

DEFAULT_ADAPTER = "{root}/{run}/adapter.safetensors"
BASE_ADAPTER = "base"  # `eval.adapters` value: no adapter, the base model itself


@dataclass
class ModelSource:
    """The base model: the fields of the `model:` section that `varlit eval` uses."""

    preset: str = "tiny"
    weights: str | None = None
    vae_weights: str | None = None
    text_encoder: str | None = None
    init_seed: int = 0

    @property
    def random_init(self) -> bool:
        from ..models.presets import get_preset

        return (self.weights or get_preset(self.preset).weights) is None


@dataclass
class SubjectPlan:
    """Everything about one subject that can be checked before a model is loaded."""

    name: str
    class_word: str
    live: bool
    folder: Path
    photos: list[SubjectPhoto]
    adapter: Path | None
    prompts: list[EvalPrompt]
    slugs: list[str]
    class_prompt: str
    aspect: str = "square"
    resample: str = "bilinear"


def _own_subject_name(data: dict[str, Any]) -> str | None:
    if data.get("subject_dir"):
        return Path(data["subject_dir"]).expanduser().name
    return data.get("subject")


def load_subject(name: str | None, data: dict[str, Any]) -> tuple[Any, list[SubjectPhoto], bool, list[str]]:
    """(Subject, photos, live, the photos' own captions) through the data layer: the data config's own
    subject, or a DreamBench name (with the data config's dreambench_root and photo policy)."""
    kwargs = dict(data)
    if name is not None and name != _own_subject_name(data):
        kwargs.update(subject_dir=None, class_word=None, live=None, subject=name, photo_captions=None)
        kwargs["caption_from_filename"] = False
    dm = SubjectDataModule(**kwargs)
    dm.setup("validate")
    subject = dm.subject
    live = subject.live
    if kwargs.get("subject_dir") and kwargs.get("live") is None:  # a photo folder: guess as DreamBench does
        live = subject.class_word in LIVE_CLASSES
    return subject, dm.photos, live, list(dm.photo_prompts.values())


def resolve_adapters(spec: list[str] | str | None, subjects: list[str], run: RunConfig) -> list[Path | None]:
    """One adapter path (or None for the base model) per subject; every file must exist."""
    if spec is None:
        patterns = [DEFAULT_ADAPTER] * len(subjects)
    elif isinstance(spec, str):
        patterns = [spec] * len(subjects)
    elif len(spec) == 1:
        patterns = list(spec) * len(subjects)
    elif len(spec) == len(subjects):
        patterns = list(spec)
    else:
        raise ValueError(
            f"eval.adapters lists {len(spec)} paths for {len(subjects)} subjects ({', '.join(subjects)}); "
            "give one per subject or one pattern with {subject}"
        )
    paths: list[Path | None] = []
    owner: dict[Path, str] = {}
    for name, pattern in zip(subjects, patterns):
        if pattern.strip().lower() == BASE_ADAPTER:
            paths.append(None)
            continue
        try:
            path = Path(pattern.format_map({"subject": name, "run": run.name, "root": run.root})).expanduser()
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(
                f"eval.adapters: cannot fill pattern {pattern!r} ({type(err).__name__}: {err}); "
                "its fields are {subject}, {run} and {root}"
            ) from None
        if not path.is_file():
            raise FileNotFoundError(
                f"adapter for subject {name!r} not found: {path} (eval.adapters; train it with `varlit fit` "
                f"or pass --eval.adapters)"
            )
        key = path.resolve()
        if key in owner:
            raise ValueError(
                f"eval.adapters: subjects {owner[key]!r} and {name!r} would both use {path}; "
                "put {subject} in the pattern or list one adapter per subject"
            )
        owner[key] = name
        paths.append(path)
    return paths


def check_adapter_header(path: Path, preset: str) -> dict[str, Any]:
    """Cheap check (header only) that an adapter fits the preset, before any sampling starts."""
    meta = read_adapter_meta(path)
    if meta.get("preset") and meta["preset"] != preset:
        raise CheckpointError(
            f"{path}: adapter was trained on preset {meta['preset']!r}, eval uses {preset!r}"
        )
    return meta


def unique_slugs(prompts: list[EvalPrompt]) -> list[str]:
    """Folder names from the readable prompt ("a_dog_on_the_beach"); clashes get _2, _3 ..."""
    slugs: list[str] = []
    for p in prompts:
        base = slugify(drop_placeholder(p.prompt))
        slug, k = base, 2
        while slug in slugs:
            slug, k = f"{base}_{k}", k + 1
        slugs.append(slug)
    return slugs


def plan_subjects(cfg: EvalConfig, data: dict[str, Any], run: RunConfig, preset: str) -> list[SubjectPlan]:
    """Resolve and check subjects, adapters and prompts (before anything is loaded)."""
    cfg.check()
    templates = check_templates(cfg.prompts) if cfg.prompts is not None else None
    names = list(cfg.subjects) if cfg.subjects else [None]
    loaded = [load_subject(name, data) for name in names]
    subject_names = [s.name for s, _, _, _ in loaded]
    if len(set(subject_names)) != len(subject_names):
        raise ValueError(f"eval.subjects lists a subject twice: {subject_names}")
    adapters = resolve_adapters(cfg.adapters, subject_names, run)
    plans = []
    for (subject, photos, live, captions), adapter in zip(loaded, adapters):
        identifier = None
        if adapter is not None:
            meta = check_adapter_header(adapter, preset)
            recorded = meta.get("data") if isinstance(meta.get("data"), dict) else {}
            identifier = recorded.get("identifier")  # a rare-token adapter: its word, not <placeholder>
            trained_on = meta.get("class_word")
            if trained_on and trained_on != subject.class_word:
                log.warning(
                    "%s: adapter was trained with class word %r, subject %s has %r",
                    adapter,
                    trained_on,
                    subject.name,
                    subject.class_word,
                )
        world = world_subject_name(subject.name, subject.class_word)
        if templates is not None:
            chosen = templates
        else:
            chosen = (
                world_eval_templates(world)
                if world
                else own_eval_templates(captions)
                if is_world_preset(preset)
                else default_templates(live)
            )
        prompts = [
            make_prompt(
                t, subject.class_word, cfg.clip_t_text, placeholder=adapter is not None, identifier=identifier
            )
            for t in chosen
        ]
        plans.append(
            SubjectPlan(
                name=subject.name,
                class_word=subject.class_word,
                live=live,
                folder=subject.folder,
                photos=photos,
                adapter=adapter,
                prompts=prompts,
                slugs=unique_slugs(prompts),
                class_prompt=(
                    WORLD_CLASS_TEMPLATE.replace("{class}", subject.class_word)
                    if world or is_world_preset(preset)
                    else class_prompt(subject.class_word)
                ),
                aspect=data.get("aspect") or "square",
                resample=data.get("resample") or "bilinear",
            )
        )
    return plans
