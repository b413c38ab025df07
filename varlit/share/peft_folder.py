"""A LoRA subject adapter as a peft folder: `adapter_config.json` + `adapter_model.safetensors`.

`peft.PeftModel.from_pretrained(<varlit Infinity>, folder)` loads it onto a varlit base model and gives the
logits varlit's own (merged) adapter gives. peft has no place for the learned subject vectors (they replace
a T5 output row, outside the transformer), so the folder also keeps the varlit adapter itself
(`varlit_adapter.safetensors`): `Pipeline.from_pretrained(folder)` and `varlit sample --adapter` read it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from ..io import atomic_write
from ..models.loading import CheckpointError
from ..pipeline import ADAPTER_IN_FOLDER
from ..tuning.adapter import adapter_type, read_adapter
from ..tuning.lora import LoraPlan

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."  # where PeftModel puts the wrapped model


def base_model_id(meta: dict[str, Any]) -> str:
    """The hub metadata's `base_model`: the released repo for Infinity presets, varlit's preset otherwise."""
    preset = str(meta.get("preset") or "")
    return "FoundationVision/Infinity" if preset.startswith("infinity") else f"varlit/{preset or 'unknown'}"


def export_peft(adapter: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the peft folder of a LoRA adapter into `out` (created); returns the folder."""
    adapter, out = Path(adapter), Path(out)
    read = read_adapter(adapter)
    if adapter_type(read.meta) != "lora":
        raise CheckpointError(
            f"{adapter}: a full adapter replaces whole tensors and has no peft LoRA form; train a LoRA adapter "
            "(--model.adapter.type lora) to export it"
        )
    plan = LoraPlan.from_meta(read.meta["adapter"], str(adapter))
    config = plan.peft_config()
    config.base_model_name_or_path = base_model_id(read.meta)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    tensors = {PEFT_PREFIX + k: v.contiguous() for k, v in read.tensors.items()}
    atomic_write(
        out / PEFT_WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt", "source": "varlit"})
    )
    if adapter.resolve() != (out / ADAPTER_IN_FOLDER).resolve():
        atomic_write(out / ADAPTER_IN_FOLDER, lambda tmp: shutil.copyfile(adapter, tmp))
    return out
