"""Which subject a sweep run trains on, and the few config values the sweep runner must know beforehand.

The runner does not build the full LightningCLI parser (that would import the model stack for every plan);
it reads the YAML config files the way `--config` layers them (later files win) and then the `--key=value`
overrides, enough to learn the config's own subject and the length of its scale schedule.

Subjects: an empty list means "the config's own subject" (`data.subject`, or the folder name of
`data.subject_dir`), which is how `CONFIG=experiments/tiny.yaml` works. Named subjects are DreamBench
subjects; choosing one replaces whatever subject the config names (`data.subject_dir` and `data.class_word`
are cleared so the DreamBench class word applies). `all` expands to every DreamBench subject.

World subjects (`varlit.world`): when the config trains a world subject (`data.subject: world:<name>`), names
are world subject names (`polka_ball`, or `world:polka_ball`) and `all` expands to the eight of them; a
`world:<name>` is accepted with any config. Their run folders are labelled by the bare name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# The 30 subjects of DreamBench (google/dreambooth), used when no local copy is there to list them.
DREAMBENCH_SUBJECTS: tuple[str, ...] = (
    "backpack",
    "backpack_dog",
    "bear_plushie",
    "berry_bowl",
    "can",
    "candle",
    "cat",
    "cat2",
    "clock",
    "colorful_sneaker",
    "dog",
    "dog2",
    "dog3",
    "dog5",
    "dog6",
    "dog7",
    "dog8",
    "duck_toy",
    "fancy_boot",
    "grey_sloth_plushie",
    "monster_toy",
    "pink_sunglasses",
    "poop_emoji",
    "rc_car",
    "red_cartoon",
    "robot_toy",
    "shiny_sneaker",
    "teapot",
    "vase",
    "wolf_plushie",
)
WORLD_PREFIX = "world:"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class SubjectChoice:
    """`label` names the run folder; `overrides` are the fit arguments that select the subject (none: the
    config's own); `dreambench` is the DreamBench name when the subject was chosen by name."""

    label: str
    overrides: tuple[str, ...] = ()
    dreambench: str | None = None
    world: str | None = None  # the world subject's name when the subject was chosen by name

    @property
    def chosen(self) -> str | None:
        """What `--subjects` must say to pick this subject again (None: the config's own)."""
        return self.dreambench or (f"{WORLD_PREFIX}{self.world}" if self.world else None)


def check_name(name: str, what: str) -> str:
    """Names become folders, wandb tags and shell words: keep them plain."""
    if not _SAFE_NAME.match(name):
        raise ValueError(
            f"{what} {name!r} is not a plain name (letters, digits, '_', '.', '+', '-'; no leading symbol)"
        )
    return name


def _parse_override(arg: str, nxt: str | None) -> tuple[str, str, int] | None:
    """(key, raw value, argv items consumed) of `--key=value` or `--key value`; None for anything else."""
    if not arg.startswith("--") or arg == "--":
        return None
    if "=" in arg:
        key, value = arg[2:].split("=", 1)
        return key, value, 1
    if nxt is not None and not nxt.startswith("--"):
        return arg[2:], nxt, 2
    return None


def _flatten(tree: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(tree, dict) and tree:
        for k, v in tree.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif prefix:
        out[prefix] = tree


def read_config_values(configs: Sequence[str | os.PathLike], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Dotted key -> value after layering the config files and then the `--key=value` overrides.

    A section replaced by an override (`--data.subject_dir=null`) drops the keys under it, as in jsonargparse.
    """
    values: dict[str, Any] = {}
    for path in configs:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist")
        try:
            tree = yaml.safe_load(p.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{p}: not valid YAML: {err}") from None
        if tree is None:
            continue
        if not isinstance(tree, dict):
            raise ValueError(
                f"{p}: expected a mapping of config groups at the top, got {type(tree).__name__}"
            )
        flat: dict[str, Any] = {}
        _flatten(tree, "", flat)
        _merge(values, flat)
    items = list(overrides)
    i = 0
    while i < len(items):
        parsed = _parse_override(items[i], items[i + 1] if i + 1 < len(items) else None)
        if parsed is None:
            i += 1
            continue
        key, raw, used = parsed
        try:
            value = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError:
            value = raw
        flat = {}
        _flatten({key: value}, "", flat)
        _merge(values, flat)
        i += used
    return values


def _merge(values: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        for old in [k for k in values if k.startswith(key + ".")]:
            del values[old]
        values[key] = value


def config_subject(values: dict[str, Any], where: str) -> SubjectChoice:
    """The subject a config trains on when the sweep names none."""
    subject, folder = values.get("data.subject"), values.get("data.subject_dir")
    if subject and str(subject).startswith(WORLD_PREFIX):
        return SubjectChoice(check_name(str(subject)[len(WORLD_PREFIX) :].strip(), f"{where}: data.subject"))
    if subject:
        return SubjectChoice(check_name(str(subject), f"{where}: data.subject"))
    if folder:
        name = Path(str(folder)).name
        return SubjectChoice(check_name(name, f"{where}: the folder name of data.subject_dir"))
    raise ValueError(
        f"{where}: the config names no subject (neither data.subject nor data.subject_dir); "
        "give SUBJECTS (DreamBench names) or set one in the config"
    )


def dreambench_subjects(root: str | os.PathLike | None = None) -> list[str]:
    """Every DreamBench subject: from a local copy's prompts file when there is one, else the built-in list."""
    from varlit.data import dreambench

    try:
        spec = dreambench.load_spec(root if root is not None else dreambench.default_root())
    except dreambench.DreamBenchError:
        return list(DREAMBENCH_SUBJECTS)
    return sorted(spec.classes)


def resolve_subjects(
    names: Sequence[str], values: dict[str, Any], where: str, dreambench_root: str | None = None
) -> list[SubjectChoice]:
    """The sweep's subjects: [] -> the config's own; 'all' -> every DreamBench subject (every world subject
    for a world config); else DreamBench names (world names for a world config, or `world:<name>`)."""
    if not names:
        return [config_subject(values, where)]
    world_config = str(values.get("data.subject") or "").startswith(WORLD_PREFIX)
    expanded: list[str] = []
    for n in names:
        if n == "all":
            expanded.extend(world_subject_names() if world_config else dreambench_subjects(dreambench_root))
        else:
            expanded.append(n)
    out: list[SubjectChoice] = []
    for n in dict.fromkeys(expanded):
        if n.startswith(WORLD_PREFIX) or world_config:
            out.append(world_choice(n[len(WORLD_PREFIX) :] if n.startswith(WORLD_PREFIX) else n))
            continue
        check_name(n, "subject")
        out.append(
            SubjectChoice(
                n,
                (f"--data.subject={n}", "--data.subject_dir=null", "--data.class_word=null"),
                dreambench=n,
            )
        )
    return out


def world_subject_names() -> list[str]:
    from varlit.world.subjects import SUBJECT_NAMES

    return list(SUBJECT_NAMES)


def world_choice(name: str) -> SubjectChoice:
    """A world subject by name; an unknown name lists the world's subjects."""
    names = world_subject_names()
    if name not in names:
        raise ValueError(f"subject {name!r}: not a world subject; choose from {', '.join(names)} or 'all'")
    return SubjectChoice(
        name,
        (f"--data.subject={WORLD_PREFIX}{name}", "--data.subject_dir=null", "--data.class_word=null"),
        world=name,
    )


def split_names(text: str | Sequence[str] | None) -> list[str]:
    """'dog cat' / 'dog,cat' / ['dog', 'cat'] -> ['dog', 'cat'] (what Make variables and wandb pass)."""
    if text is None:
        return []
    parts = [text] if isinstance(text, str) else list(text)
    return [w for p in parts for w in re.split(r"[\s,]+", p.strip()) if w]


def num_scales(values: dict[str, Any]) -> int:
    """Scales of the run's schedule (model preset + data.pn), for the explicit per-scale weight lists."""
    from varlit.models.presets import get_preset

    preset = get_preset(str(values.get("model.preset") or "tiny"))
    pn = values.get("data.pn")
    return len(preset.schedule(pn=str(pn) if pn else None))
