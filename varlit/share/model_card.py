"""The folder's README.md: the hub's model-card metadata header (base model, licence, method, trigger prompt,
sample images) and a few lines on how to use the adapter."""

from __future__ import annotations

from typing import Any

import yaml

from .peft_folder import base_model_id

# The licence of the base model's weights: the released Infinity models are MIT, varlit's own world and the
# random tiny model are varlit's (MIT).
LICENSE = "mit"


def trigger_prompt(meta: dict[str, Any]) -> str:
    """The prompt the adapter was trained on (`<placeholder>` stands for the learned subject vectors)."""
    data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    prompt = data.get("instance_prompt")
    if prompt:
        return str(prompt)
    return f"a photo of {meta.get('placeholder', '<placeholder>')} {meta.get('class_word') or 'subject'}"


def model_card(meta: dict[str, Any], samples: list[tuple[str, str]]) -> str:
    """README.md text; `samples` are (file path relative to the folder, prompt) pairs."""
    trigger = trigger_prompt(meta)
    header = {
        "base_model": base_model_id(meta),
        "library_name": "peft",
        "license": LICENSE,
        "pipeline_tag": "text-to-image",
        "tags": ["varlit", "arbooth", "infinity", "lora", "subject-driven-generation", "text-to-image"],
        "instance_prompt": trigger,
        "widget": [{"text": prompt, "output": {"url": path}} for path, prompt in samples],
    }
    vectors = bool(meta.get("subject_vectors"))
    lines = [
        "---",
        yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {meta.get('class_word') or 'subject'} adapter for {base_model_id(meta)}",
        "",
        "A subject adapter tuned with varlit (ARBooth's method: selective layer tuning, prior distillation, "
        f"scale-wise weighting) on preset `{meta.get('preset')}`, {meta.get('step')} steps.",
        "",
        f"Trigger prompt: `{trigger}`"
        + (
            " (`<placeholder>` is the learned subject: its vectors are in `varlit_adapter.safetensors`)."
            if vectors
            else "."
        ),
        "",
        "```python",
        "from varlit.pipeline import Pipeline",
        "",
        'pipe = Pipeline.from_pretrained("<this folder or repo id>")  # base model + this adapter',
        f'images = pipe("{trigger}", num_images=4, seed=0)',
        "```",
        "",
        "`adapter_config.json` + `adapter_model.safetensors` are a peft LoRA adapter of the varlit Infinity "
        "transformer (`peft.PeftModel.from_pretrained(model, folder)`).",
    ]
    if samples:
        lines += ["", "## Samples", ""] + [f"![{prompt}]({path})" for path, prompt in samples]
    return "\n".join(lines) + "\n"
