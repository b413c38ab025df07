"""Evaluation prompts: DreamBench's 25 object / live templates and how a template becomes text.

Templates follow the released ARBooth prompt files: one `{}` where the subject goes. For generation it is
filled with "<placeholder> {class}" (ARBooth: `prompt.format("<placeholder> " + class)`); the DreamBench
file's `'a {0} {1} ...'.format(unique_token, class_token)` is the same thing. A template may instead hold
`<placeholder>` (and `{class}`) literally, as the training templates of `SubjectDataModule` do.

What CLIP-T compares the samples with (`clip_t_text`):
- "class" (default): the prompt with the placeholder replaced by the class word, "a dog on the beach".
  CLIP cannot read the learned token, so this is the text the image should match.
- "arbooth_compat": what the released script did. `tools/evaluate.py` reads each line of its prompt file
  ("a {} on the beach") and passes that line, unformatted, to `CLIPEvaluator.txt_to_img_similarity`, which
  runs `clip.tokenize` on it: CLIP-T was scored against the literal template with the braces in it and no
  class word. Only useful to compare with numbers produced by that script. (For a `<placeholder>`-style
  template the template string itself is used.)

The released prompt files (`inputs/prompts_{live,nonlive}_objects.txt`) are not DreamBench's lists: 31
lines each, DreamBench's first 24 templates (no "cube shaped") plus 7 of their own. varlit's default is
DreamBench's official 25 (object or live by class), as the issue asks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from varlit.data.subjects import PLACEHOLDER
from varlit.data.templates import fill_template

ClipTextMode = Literal["class", "arbooth_compat"]

#: The bare class prompt PRES samples (ARBooth `run_arbooth_for_pres.py`: "a photo of {}".format(class)).
CLASS_PROMPT = "a photo of {class}"

_COMMON = (
    "a {} in the jungle",
    "a {} in the snow",
    "a {} on the beach",
    "a {} on a cobblestone street",
    "a {} on top of pink fabric",
    "a {} on top of a wooden floor",
    "a {} with a city in the background",
    "a {} with a mountain in the background",
    "a {} with a blue house in the background",
    "a {} on top of a purple rug in a forest",
)
_ATTRIBUTES = ("a red {}", "a purple {}", "a shiny {}", "a wet {}", "a cube shaped {}")

#: DreamBench `prompts_and_classes.txt`, "Object Prompts" (25).
DREAMBENCH_OBJECT_TEMPLATES: tuple[str, ...] = (
    *_COMMON,
    "a {} with a wheat field in the background",
    "a {} with a tree and autumn leaves in the background",
    "a {} with the Eiffel Tower in the background",
    "a {} floating on top of water",
    "a {} floating in an ocean of milk",
    "a {} on top of green grass with sunflowers around it",
    "a {} on top of a mirror",
    "a {} on top of the sidewalk in a crowded street",
    "a {} on top of a dirt road",
    "a {} on top of a white rug",
    *_ATTRIBUTES,
)

#: DreamBench `prompts_and_classes.txt`, "Live Subject Prompts" (25).
DREAMBENCH_LIVE_TEMPLATES: tuple[str, ...] = (
    *_COMMON,
    "a {} wearing a red hat",
    "a {} wearing a santa hat",
    "a {} wearing a rainbow scarf",
    "a {} wearing a black top hat and a monocle",
    "a {} in a chef outfit",
    "a {} in a firefighter outfit",
    "a {} in a police outfit",
    "a {} wearing pink glasses",
    "a {} wearing a yellow shirt",
    "a {} in a purple wizard outfit",
    *_ATTRIBUTES,
)


def default_templates(live: bool) -> list[str]:
    return list(DREAMBENCH_LIVE_TEMPLATES if live else DREAMBENCH_OBJECT_TEMPLATES)


@dataclass(frozen=True)
class EvalPrompt:
    """One template made concrete for one subject."""

    template: str  # as configured
    prompt: str  # what the model is given
    clip_text: str  # what CLIP-T compares the samples with


def check_templates(templates: Sequence[str], where: str = "eval.prompts") -> list[str]:
    """Each template must say where the subject goes: one `{}` or one `<placeholder>`."""
    if isinstance(templates, str):
        raise ValueError(f"{where}: expected a list of prompt templates, got the string {templates!r}")
    templates = list(templates)
    if not templates:
        raise ValueError(
            f"{where}: empty prompt list; give at least one template such as 'a {{}} on the beach'"
        )
    for i, t in enumerate(templates):
        slots, marks = t.count("{}"), t.count(PLACEHOLDER)
        if slots + marks != 1:
            raise ValueError(
                f"{where}[{i}] = {t!r}: a template needs exactly one '{{}}' (or one '{PLACEHOLDER}') where the "
                "subject goes, e.g. 'a {} on the beach'"
            )
    if len(set(templates)) != len(templates):
        dup = next(t for t in templates if templates.count(t) > 1)
        raise ValueError(f"{where}: template {dup!r} is listed twice")
    return templates


def drop_placeholder(text: str) -> str:
    """The prompt as CLIP (or the base model) can read it: the learned token removed, spaces tidied."""
    return " ".join(text.replace(PLACEHOLDER, " ").split())


def make_prompt(
    template: str,
    class_word: str,
    clip_t_text: ClipTextMode = "class",
    placeholder: bool = True,
    identifier: str | None = None,
) -> EvalPrompt:
    """Fill one template; `placeholder=False` leaves the learned token out (the base model never saw it);
    `identifier` (a DreamBooth-style rare token, `data.instance_prompt`) stands where the token would."""
    if clip_t_text not in ("class", "arbooth_compat"):
        raise ValueError(f"eval.clip_t_text must be 'class' or 'arbooth_compat', got {clip_t_text!r}")
    if "{}" in template:
        with_token = template.replace("{}", f"{PLACEHOLDER} {{class}}")
    else:
        with_token = template
    with_token = fill_template(with_token, class_word)
    plain = drop_placeholder(with_token)
    clip_text = plain if clip_t_text == "class" else template
    if placeholder and identifier:
        with_token = with_token.replace(PLACEHOLDER, identifier)
    return EvalPrompt(template, with_token if placeholder else plain, clip_text)


def class_prompt(class_word: str) -> str:
    return fill_template(CLASS_PROMPT, class_word)
