"""`varlit export` and `varlit push`: a subject adapter as a peft folder with a model card, on disk or on the hub.

varlit export --adapter runs/world-lora/adapter.safetensors --format peft --out runs/world-lora/peft
varlit push --adapter runs/world-lora/adapter.safetensors --repo user/my-cup
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..io import atomic_write_text, check_writable_dir
from ..share.model_card import model_card, trigger_prompt
from ..share.peft_folder import export_peft
from ..share.push import check_repo_id, upload
from ..tuning.adapter import read_adapter_meta

FORMATS = ("peft",)
SAMPLES_DIR = "samples"


def write_samples(folder: Path, prompts: list[str], samples: int, device: str) -> list[tuple[str, str]]:
    """Draw `samples` images of each prompt with the folder's adapter on its base; (path, prompt) pairs."""
    from ..pipeline import Pipeline

    pipe = Pipeline.from_pretrained(str(folder), device=device)
    out = []
    for i, prompt in enumerate(prompts):
        for k, image in enumerate(pipe(prompt, num_images=samples, seed=0)):
            rel = f"{SAMPLES_DIR}/{i:02d}_{k}.png"
            (folder / SAMPLES_DIR).mkdir(exist_ok=True)
            image.save(folder / rel)
            out.append((rel, prompt))
    return out


def export_adapter(
    adapter: str,
    out: str,
    format: str = "peft",
    samples: int = 4,
    prompts: list[str] | None = None,
    device: str = "cpu",
) -> Path:
    """Write a subject adapter as a peft folder with a model card (README.md) and sample images.

    Args:
        adapter: the varlit adapter (.safetensors) written by `varlit fit` (LoRA: --model.adapter.type lora).
        out: the folder to write (peft files, README.md, samples/, varlit_adapter.safetensors).
        format: peft (adapter_config.json + adapter_model.safetensors).
        samples: images per prompt drawn for the model card with the adapter's base (0: none).
        prompts: prompts of the sample images; default: the adapter's trigger prompt.
        device: where the samples are drawn (cpu, cuda, ...).
    """
    if format not in FORMATS:
        raise ValueError(f"--format {format!r}: choose one of {', '.join(FORMATS)}")
    if not Path(adapter).is_file():
        raise FileNotFoundError(f"adapter not found: {adapter} (--adapter)")
    if samples < 0:
        raise ValueError(f"--samples must be >= 0, got {samples}")
    check_writable_dir(out, "out")
    meta = read_adapter_meta(adapter)
    folder = export_peft(adapter, out)
    drawn = write_samples(folder, prompts or [trigger_prompt(meta)], samples, device) if samples else []
    atomic_write_text(folder / "README.md", model_card(meta, drawn))
    print(f"wrote {folder} (peft adapter, README.md model card, {len(drawn)} sample images)")
    return folder


def push_adapter(
    adapter: str,
    repo: str,
    out: str | None = None,
    private: bool = False,
    samples: int = 4,
    prompts: list[str] | None = None,
    device: str = "cpu",
) -> str:
    """Export a subject adapter (as `varlit export --format peft`) and upload the folder to the hub.

    Args:
        adapter: the varlit adapter (.safetensors) written by `varlit fit`.
        repo: the hub model repo, user/name (created if missing).
        out: where the folder is written before the upload (default: a temporary folder).
        private: create the repo private.
        samples: sample images per prompt for the model card (0: none).
        prompts: prompts of the sample images; default: the adapter's trigger prompt.
        device: where the samples are drawn.
    """
    check_repo_id(repo)  # before any work
    if out is None:
        with tempfile.TemporaryDirectory(prefix="varlit-push-") as tmp:
            return _push(adapter, repo, tmp, private, samples, prompts, device)
    return _push(adapter, repo, out, private, samples, prompts, device)


def _push(adapter, repo, out, private, samples, prompts, device) -> str:
    folder = export_adapter(adapter, out, "peft", samples, prompts, device)
    url = upload(folder, repo, private)
    print(f"pushed {folder} to {url}")
    return url
