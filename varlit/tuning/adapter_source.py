"""The base model and subject an adapter was trained on, read from its header, for the commands that load it.

`varlit sample --adapter A`, `varlit eval` and `Pipeline.load_adapter` need the base the adapter was tuned on.
The adapter records it (preset, weights, VAE, text encoder, init seed; the subject and its class word), so a
flag that is left out is taken from there, and a flag that says otherwise is refused by name: loading the
wrong base would only fail later, on a fingerprint, or silently draw something else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..models.loading import CheckpointError

# base-model field -> the flag `varlit sample` names it by (eval: --model.<field>)
BASE_FIELDS = ("preset", "weights", "vae_weights", "text_encoder", "init_seed")


@dataclass
class AdapterBase:
    """What an adapter says about its base model and subject (None: not recorded)."""

    preset: str | None = None
    weights: str | None = None
    vae_weights: str | None = None
    text_encoder: str | None = None
    init_seed: int | None = None
    subject: str | None = None  # data.subject (world:<name> or a DreamBench name), when it was one
    subject_dir: str | None = None  # the photo folder, when it was your own
    class_word: str | None = None
    instance_prompt: str | None = None

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> AdapterBase:
        hp = meta.get("hparams") if isinstance(meta.get("hparams"), dict) else {}
        data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
        seed = hp.get("init_seed")
        return cls(
            preset=meta.get("preset") or hp.get("preset"),
            weights=hp.get("weights"),
            vae_weights=hp.get("vae_weights"),
            text_encoder=hp.get("text_encoder"),
            init_seed=int(seed) if isinstance(seed, int) else None,
            subject=data.get("subject"),
            subject_dir=data.get("subject_dir"),
            class_word=meta.get("class_word") or data.get("class_word"),
            instance_prompt=data.get("instance_prompt"),
        )

    @classmethod
    def read(cls, path: str | os.PathLike) -> AdapterBase:
        from .adapter import read_adapter_meta

        return cls.from_meta(read_adapter_meta(path))


def data_class_word(dm: Any) -> str | None:
    """The class word a data module knows (its subject's, or its own), if any."""
    subject = getattr(dm, "subject", None)
    return getattr(subject, "class_word", None) or getattr(dm, "class_word", None)


def subject_record(dm: Any) -> dict[str, Any]:
    """What an adapter records of the subject it was tuned on (its `data` entry, read back by
    `AdapterBase.from_meta`), so `varlit eval` / `sample` need not be told again; {} without a data module."""
    if dm is None:
        return {}
    out = {
        "subject": getattr(dm, "subject_name", None),
        "subject_dir": getattr(dm, "subject_dir", None),
        "class_word": data_class_word(dm),
    }
    # a data module without one (a test's stand-in): the header simply lacks it
    out["instance_prompt"] = dm.instance_prompt if hasattr(type(dm), "instance_prompt") else None
    out["identifier"] = dm.identifier if hasattr(type(dm), "identifier") else None  # rare-token runs
    return out


def merge_base(
    path: str | os.PathLike,
    given: dict[str, Any],
    flag: str = "--{}",
    default_preset: str = "tiny",
    recorded: AdapterBase | None = None,
) -> dict[str, Any]:
    """The base-model arguments to load for adapter `path`: each one the caller left as None comes from the
    adapter; one that contradicts the adapter is refused, naming the flag (`flag` formats the field name).
    `recorded`: what the adapter's header says, when the caller has read it already (else it is read here)."""
    recorded = recorded if recorded is not None else AdapterBase.read(path)
    out = dict(given)
    for field in BASE_FIELDS:
        mine, theirs = given.get(field), getattr(recorded, field)
        if mine is None:
            out[field] = theirs
        elif theirs is not None and _differs(field, mine, theirs):
            raise CheckpointError(
                f"{flag.format(field)} {mine} contradicts the adapter {path}, which was trained on "
                f"{field} {theirs}; leave {flag.format(field)} out to use the adapter's"
            )
    if out.get("preset") is None:
        out["preset"] = default_preset
    if out.get("init_seed") is None:
        out["init_seed"] = 0
    return out


def _differs(field: str, mine: Any, theirs: Any) -> bool:
    """Weights and encoders given as another path to the same file name are the same base (a moved copy:
    the base fingerprint still checks the values); the preset and the seed must match exactly."""
    if field in ("weights", "vae_weights", "text_encoder"):
        return os.path.basename(str(mine).rstrip("/")) != os.path.basename(str(theirs).rstrip("/"))
    return str(mine) != str(theirs)
