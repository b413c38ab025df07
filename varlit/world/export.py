"""Pack the trained world into the `world` preset's folder (`varlit/world/weights/`), atomically per file."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from ..io import atomic_write, atomic_write_json
from ..models.presets import WORLD_DIR, get_preset

FILES = ("infinity.safetensors", "vae.safetensors", "judge.safetensors", "judge.json")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _float_dtype(name: str) -> torch.dtype:
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"--infinity_dtype: unknown dtype {name!r}; choose one of {', '.join(dtypes)}")
    return dtypes[name]


def _save_cast(src: Path, dst: str, dtype: torch.dtype) -> None:
    """Copy a safetensors file with its floating tensors cast to `dtype` (round to nearest)."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(src))
    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, dst)


def export_world(
    infinity: str = "runs/world/infinity/infinity.safetensors",
    vae: str = "runs/world/vae/vae.safetensors",
    judge: str = "runs/world/judge/judge.safetensors",
    text_encoder: str = "runs/world/text_encoder",
    out: str = str(WORLD_DIR),
    infinity_dtype: str = "bfloat16",
) -> Path:
    """Check every part loads strictly into the `world` architecture, then copy it into `out`.

    The transformer is stored in `infinity_dtype` (bf16 keeps the world under its 40 MB budget; the
    pipeline computes in float32 either way, and `varlit world report` measures the stored weights).
    The VAE, judge and T5 are copied as trained.
    """
    from ..models.loading import load_checkpoint
    from ..models.text import TextEncoder
    from .judge import load_judge

    p = get_preset("world")
    model, vae_model = p.build("cpu")
    load_checkpoint(model, infinity, p.hf_repo)  # strict: a file of another architecture stops here
    load_checkpoint(vae_model, vae, p.hf_repo, subkey="vae")
    load_judge(judge)
    TextEncoder.from_pretrained(text_encoder, max_length=p.infinity.text_maxlen)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = {
        "infinity.safetensors": Path(infinity),
        "vae.safetensors": Path(vae),
        "judge.safetensors": Path(judge),
        "judge.json": Path(judge).with_suffix(".json"),
    }
    store_dtype = _float_dtype(infinity_dtype)
    for name, src in sources.items():
        if name == "infinity.safetensors" and store_dtype != torch.float32:
            atomic_write(out_dir / name, lambda tmp, src=src: _save_cast(src, tmp, store_dtype))
        else:
            atomic_write(out_dir / name, lambda tmp, src=src: shutil.copyfile(src, tmp))
    te_out = out_dir / "text_encoder"
    te_out.mkdir(exist_ok=True)
    for f in sorted(Path(text_encoder).iterdir()):
        if f.is_file():
            atomic_write(te_out / f.name, lambda tmp, f=f: shutil.copyfile(f, tmp))
    manifest = {
        "preset": "world",
        "files": {
            f.relative_to(out_dir).as_posix(): sha256(f)
            for f in sorted(out_dir.rglob("*"))
            if f.is_file() and f.name not in ("manifest.json", "report.json", "report.md")
        },
        "size_bytes": sum(f.stat().st_size for f in out_dir.rglob("*") if f.is_file()),
    }
    atomic_write_json(out_dir / "manifest.json", manifest)
    print(f"world exported to {out_dir} ({manifest['size_bytes'] / 2**20:.1f} MiB)")
    print(json.dumps({k: v[:12] for k, v in manifest["files"].items()}, indent=1))
    return out_dir
