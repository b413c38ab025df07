"""The prompts a subject trains and validates on: default templates and the photos' own captions.

A template puts the class word at `{class}`; `<placeholder>` marks the learned subject token and stays
literal here. A photo's own caption comes from a `photo_captions` file in the subject folder or from the
photo's file name (`caption_from_filename`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from varlit.data.subjects import PLACEHOLDER, SubjectError

DEFAULT_INSTANCE_TEMPLATE = "a photo of <placeholder> {class}"
DEFAULT_CLASS_TEMPLATES = ("a photo of {class}",)
# Sample-grid prompts (a few of DreamBench's, which cover background, pose and attribute changes).
_VAL_COMMON = (
    "a <placeholder> {class} on the beach",
    "a <placeholder> {class} on top of a wooden floor",
    "a <placeholder> {class} with a city in the background",
)
DEFAULT_VAL_PROMPTS_OBJECT = (*_VAL_COMMON, "a red <placeholder> {class}")
DEFAULT_VAL_PROMPTS_LIVE = (*_VAL_COMMON, "a <placeholder> {class} wearing a santa hat")


def fill_template(template: str, class_word: str) -> str:
    """Put the class word into a prompt template (`{class}`; `<placeholder>` stays literal)."""
    return template.replace("{class}", class_word)


def filename_phrase(name: str) -> str:
    """The words of a photo's file name, as its context phrase: `on_the_beach-2.jpg` -> "on the beach"
    (separators become spaces; numbered tokens such as `2` or `img0042` are left out)."""
    words = re.split(r"[^A-Za-z0-9']+", Path(name).stem)
    return " ".join(w for w in words if w and not any(ch.isdigit() for ch in w))


def read_photo_captions(
    path: Path, photo_names: set[str], class_word: str, finish: Callable[[str], str] = str
) -> dict[str, str]:
    """Photo file name -> its instance prompt, from a `<photo file>: <prompt template>` per line file.

    Blank lines and `#` comments are skipped; every line must name one of `photo_names` and hold
    `<placeholder>`. `finish` is applied to each filled prompt (the data module swaps in a rare-token
    identifier there), line by line, so the first bad line is the error reported.
    """
    if not path.is_file():
        raise SubjectError(
            f"data.photo_captions: {path} does not exist; write it (one '<photo file>: <prompt>' per "
            "line) or pass --data.photo_captions null to train every photo with one prompt"
        )
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, template = line.partition(":")
        name, template = name.strip(), template.strip()
        if not sep or not template:
            raise SubjectError(f"{path}, line {n}: expected '<photo file>: <prompt template>', got {line!r}")
        if name not in photo_names:
            raise SubjectError(f"{path}, line {n}: {name!r} is not one of the subject's photos")
        if PLACEHOLDER not in template:
            raise SubjectError(f"{path}, line {n}: the prompt {template!r} has no {PLACEHOLDER}")
        out[name] = finish(fill_template(template, class_word))
    return out


def describe_captions(
    prompts: dict[str, str], num_photos: int, photo_captions: str | None, instance_prompt: str, folder: Path
) -> str:
    """One line: how the photos are captioned (`prompts`: their own captions), and with one prompt for all,
    the risk (the subject may learn the backgrounds) and the fixes, pointing at a `captions.txt` if any."""
    n = num_photos
    source = (
        f"data.photo_captions ({photo_captions})"
        if photo_captions is not None
        else "their file names (data.caption_from_filename)"
    )
    if prompts:
        rest = "" if len(prompts) == n else f"; the other {n - len(prompts)} use {instance_prompt!r}"
        return f"captions: {len(prompts)} of {n} photos captioned from {source}{rest}"
    found = folder / "captions.txt"
    hint = (
        f" ({found} exists: --data.photo_captions captions.txt uses it)"
        if found.is_file() and photo_captions is None
        else ""
    )
    return (
        f"captions: none; all {n} photos train on {instance_prompt!r}, so the subject may learn the "
        "photos' backgrounds too; name each photo's background with --data.photo_captions FILE or "
        f"--data.caption_from_filename true{hint}"
    )
