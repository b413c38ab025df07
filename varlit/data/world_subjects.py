"""World subjects as data: `--data.subject world:<name>` and the world's prompt lists.

The world (`varlit.world`) ships eight subjects as DreamBench-like folders under
`varlit/world/subject_photos/<name>/`. `world:<name>` resolves to that folder and to the subject's class
word (never live). A subject counts as a world subject wherever it is selected (`world:<name>`, or a
`subject_dir` whose folder is named after a world subject and whose class word is that subject's class):
its default validation and evaluation prompts are then the world's (a context phrase the pretraining
captions use) rather than DreamBench's, which name backgrounds the world cannot draw.
"""

from __future__ import annotations

from pathlib import Path

from varlit.data.subjects import Subject, SubjectError

WORLD_PREFIX = "world:"
SUBJECT_PHOTOS_DIR = Path(__file__).resolve().parent.parent / "world" / "subject_photos"
#: Bare class prompt of a world subject: the pretraining caption "a photo of a {cls}" (PARTIAL_TEMPLATES).
WORLD_CLASS_TEMPLATE = "a photo of a {class}"
#: Validation grid size: as many prompts as DreamBench's default grid (4).
NUM_WORLD_VAL_PROMPTS = 4


def is_world_spec(subject: str | None) -> bool:
    return subject is not None and subject.strip().startswith(WORLD_PREFIX)


def world_subject(spec: str) -> Subject:
    """`world:<name>` -> the shipped folder and the subject's class word; an unknown name lists the names."""
    from varlit.world.subjects import SUBJECT_NAMES, SUBJECTS

    name = spec.strip()[len(WORLD_PREFIX) :].strip()
    if name not in SUBJECTS:
        raise SubjectError(
            f"data.subject={spec!r}: unknown world subject; choose one of {', '.join(SUBJECT_NAMES)}"
        )
    folder = SUBJECT_PHOTOS_DIR / name
    if not folder.is_dir():
        raise SubjectError(
            f"data.subject={spec!r}: the shipped photos {folder} are missing; "
            "write them with `varlit world subjects --out varlit/world/subject_photos` or reinstall varlit"
        )
    return Subject(name=name, class_word=SUBJECTS[name].cls, folder=folder, live=False)


def world_subject_name(name: str, class_word: str) -> str | None:
    """The world subject a (folder name, class word) pair denotes, or None for any other subject."""
    from varlit.world.subjects import SUBJECTS

    found = SUBJECTS.get(name)
    return name if found is not None and found.cls == class_word else None


def world_val_templates(name: str) -> list[str]:
    """Validation prompts: the first contexts the subject's photos never show (the composition test)."""
    from varlit.world.scenes import CONTEXTS
    from varlit.world.subjects import get_subject

    unseen = get_subject(name).unseen_contexts[:NUM_WORLD_VAL_PROMPTS]
    return [f"a photo of a <placeholder> {{class}} {CONTEXTS[c]}" for c in unseen]


def world_eval_templates(name: str) -> list[str]:
    """Evaluation templates (one `{}` for "<placeholder> {class}"): one per world context the subject's photos
    never show. Only there does a sample show the subject recomposed rather than a photo recalled; the
    context metrics then measure exactly what the demo claims."""
    from varlit.world.scenes import CONTEXTS
    from varlit.world.subjects import get_subject

    return [f"a photo of a {{}} {CONTEXTS[c]}" for c in get_subject(name).unseen_contexts]


def is_world_preset(preset: str | None) -> bool:
    """The world model (`world`, or a preset derived from it such as `world-v2`): it draws only the world's
    classes and contexts, so DreamBench's prompts (the Eiffel Tower, a cobblestone street) mean nothing to it."""
    return preset is not None and (preset == "world" or preset.startswith("world-"))


def contexts_named(prompts: list[str]) -> list[str]:
    """World context ids whose phrase appears in any of `prompts` (what the subject's photos show)."""
    from varlit.world.scenes import CONTEXTS

    return [c for c, phrase in CONTEXTS.items() if any(phrase in p for p in prompts)]


def own_unseen_contexts(photo_prompts: list[str]) -> list[str]:
    """For a subject of your own on the world model: the world contexts its photo captions do not name
    (all of them when the photos have no captions), in the world's order."""
    from varlit.world.scenes import CONTEXTS

    seen = set(contexts_named(photo_prompts))
    return [c for c in CONTEXTS if c not in seen]


def own_val_templates(photo_prompts: list[str]) -> list[str]:
    """Validation prompts of your own subject on the world model: the first unseen world contexts."""
    from varlit.world.scenes import CONTEXTS

    unseen = own_unseen_contexts(photo_prompts)[:NUM_WORLD_VAL_PROMPTS]
    return [f"a photo of a <placeholder> {{class}} {CONTEXTS[c]}" for c in unseen]


def own_eval_templates(photo_prompts: list[str]) -> list[str]:
    """Evaluation templates of your own subject on the world model: one per unseen world context."""
    from varlit.world.scenes import CONTEXTS

    return [f"a photo of a {{}} {CONTEXTS[c]}" for c in own_unseen_contexts(photo_prompts)]
