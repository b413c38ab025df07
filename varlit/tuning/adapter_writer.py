"""What a tuning run writes as its adapter: the tuned tensors, the subject vectors and the record of what
they were tuned on (base, freeze spec, LoRA settings, data), read back by `varlit.tuning.adapter`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from .adapter import save_adapter
from .adapter_source import subject_record
from .lora import adapter_state
from .subject_embedding import PLACEHOLDER


class TunedRun(Protocol):
    """The parts of `SubjectTuningModule` an adapter is made of (a protocol, so this module stays below it)."""

    student: torch.nn.Module
    mask: Any
    lora: Any
    adapter_cfg: Any
    preset: Any
    subject_embedding: Any
    global_step: int
    hparams: Any
    _base_fingerprint: Any

    def _base_id(self, part: str) -> str: ...
    def _class_word(self) -> str | None: ...
    def _datamodule(self) -> Any: ...


def tuned_tensors(student: torch.nn.Module, trainable: set[str], lora: Any) -> dict[str, torch.Tensor]:
    """The tensors an adapter file holds: the masked tensors (full) or the LoRA A/B (lora, under peft's
    portable names `<module>.lora_A.weight`)."""
    if lora is not None:
        return adapter_state(student)
    params = dict(student.named_parameters())
    return {k: params[k] for k in sorted(trainable)}


def write_adapter(
    run: TunedRun, path: str | Path, extra_meta: dict[str, Any] | None, dtype: torch.dtype | None
) -> Path:
    """Save `run`'s adapter at `path` (atomically, see `save_adapter`) with the metadata that lets sample,
    eval and resume check it against a base model."""
    meta = {
        "preset": run.preset.name,
        "weights": run._base_id("model"),
        "placeholder": PLACEHOLDER,
        "class_word": run._class_word(),
        "step": int(run.global_step),
        "freeze": run.mask.as_hparams(),
        "base_fingerprint": run._base_fingerprint,
        "adapter": run.lora.meta(run.adapter_cfg) if run.lora is not None else {"type": "full"},
        "hparams": {k: v for k, v in run.hparams.items()},
        "data": subject_record(run._datamodule()),
        **(extra_meta or {}),
    }
    vectors = run.subject_embedding.vectors if run.subject_embedding is not None else None
    tensors = tuned_tensors(run.student, run.mask.trainable, run.lora)
    return save_adapter(path, tensors, vectors, meta, dtype=dtype)
