"""Command-line choices that replace what a config file says alongside them.

A config names one subject (`data.subject: world:twotone_cup`, or `data.subject_dir` + `data.class_word`)
and one base model (`model.preset` with its weights and text encoder). The data module and the model take
exactly one of each, so `--config experiments/world.yaml --data.subject_dir my_photos` would stop at "give
exactly one subject" although the intent is plain: the command line's subject replaces the config's. This
module rewrites the argument list so that it does: right after a flag that picks a new subject (or preset),
the settings that belonged to the old one are reset to null, unless the command line sets them itself.
"""

from __future__ import annotations

from collections.abc import Sequence

# flag -> the keys that describe the choice it replaces (reset unless given on the command line)
REPLACES: dict[str, tuple[str, ...]] = {
    # own photos: the config's subject, and its per-photo captions file (a name inside the old folder)
    "data.subject_dir": ("data.subject", "data.photo_captions"),
    # a named subject: the config's photo folder and its class word (a named subject has its own)
    "data.subject": ("data.subject_dir", "data.class_word"),
    # another base model: the config's weights, text encoder and pixel budget belong to the config's preset
    "model.preset": ("model.weights", "model.vae_weights", "model.text_encoder", "data.pn"),
}


def _flag_value(args: Sequence[str], i: int) -> tuple[str, str | None, int] | None:
    """(key, value, index of the last token) of a `--key value` / `--key=value` flag at args[i]."""
    token = args[i]
    if not token.startswith("--"):
        return None
    key, eq, value = token[2:].partition("=")
    if eq:
        return key, value, i
    if i + 1 < len(args) and not args[i + 1].startswith("--"):
        return key, args[i + 1], i + 1
    return key, None, i


def given_keys(args: Sequence[str]) -> set[str]:
    """The dotted keys the command line sets itself."""
    keys = set()
    for i in range(len(args)):
        found = _flag_value(args, i)
        if found is not None:
            keys.add(found[0])
    return keys


def replace_config_choices(args: Sequence[str]) -> list[str]:
    """`args` with `--<key>=null` inserted after each flag that replaces a config's subject or preset."""
    args = list(args)
    given = given_keys(args)
    out: list[str] = []
    i = 0
    while i < len(args):
        found = _flag_value(args, i)
        if found is None:
            out.append(args[i])
            i += 1
            continue
        key, value, last = found
        out.extend(args[i : last + 1])
        i = last + 1
        if key in REPLACES and value not in (None, "", "null", "None"):
            out.extend(f"--{k}=null" for k in REPLACES[key] if k not in given)
    return out
