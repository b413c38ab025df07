"""`varlit download --preset infinity-2b`: fetch a preset's released weights into the Hugging Face cache.

The files land where `varlit sample | fit | eval` look for them (the hub cache, `HF_HOME`), so every later
command works offline (`HF_HUB_OFFLINE=1`). huggingface_hub shows a progress bar per file and resumes
interrupted downloads.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models.hub import HubUnavailableError, download_command, hub_offline, hub_reachable, why_unavailable
from ..models.presets import get_preset

# Only the PyTorch files of the T5 repo (it also ships TF, Flax and other exports of the same weights).
TEXT_ENCODER_PATTERNS = ("*.json", "spiece.model", "*.safetensors")


@dataclass(frozen=True)
class DownloadItem:
    """One hub download: a file (or folder) of a repo, or a whole model repo filtered by patterns."""

    repo: str
    name: str | None  # file or folder name in the repo; None: the repo, filtered by `patterns`
    patterns: tuple[str, ...] = ()

    def command(self) -> str:
        if self.name is None:
            includes = " ".join(f"--include '{p}'" for p in self.patterns)
            return f"{download_command(self.repo)} {includes}".strip()
        if "." not in self.name:  # a folder (sharded checkpoint)
            return f"{download_command(self.repo)} --include '{self.name}/*'"
        return download_command(self.repo, [self.name])


def download_plan(preset: str) -> list[DownloadItem]:
    """What a preset needs from the hub: transformer, VAE, text encoder. Random-init presets need nothing."""
    p = get_preset(preset)
    items = []
    if p.weights:
        items.append(DownloadItem(p.hf_repo, p.weights))
    if p.vae_weights:
        items.append(DownloadItem(p.hf_repo, p.vae_weights))
    if p.weights and "/" in p.text_encoder:  # a hub id (the tiny preset's T5 is built offline)
        items.append(DownloadItem(p.text_encoder, None, TEXT_ENCODER_PATTERNS))
    return items


def download(preset: str = "infinity-2b", dry_run: bool = False) -> list[str]:
    """Download a preset's weights into the Hugging Face cache, with progress; prints where each went.

    Args:
        preset: infinity-2b or infinity-8b (tiny is random-initialised: nothing to download).
        dry_run: only print the equivalent `hf download` commands.
    """
    plan = download_plan(preset)
    if not plan:
        print(f"preset {preset!r} is random-initialised: nothing to download")
        return []
    if dry_run:
        for item in plan:
            print(item.command())
        return [item.command() for item in plan]
    if hub_offline() or not hub_reachable():
        commands = "; ".join(item.command() for item in plan)
        raise HubUnavailableError(
            f"cannot download ({why_unavailable()}); on a machine with network run: {commands}"
        )
    from huggingface_hub import hf_hub_download, snapshot_download

    paths = []
    for item in plan:
        print(f"downloading {item.repo} {item.name or ' '.join(item.patterns)}", flush=True)
        if item.name is None:
            path = snapshot_download(item.repo, allow_patterns=list(item.patterns))
        elif "." not in item.name:
            path = f"{snapshot_download(item.repo, allow_patterns=[f'{item.name}/*'])}/{item.name}"
        else:
            path = hf_hub_download(item.repo, item.name)
        print(f"  -> {path}")
        paths.append(str(path))
    print(
        f"done: `varlit sample --preset {preset} ...` now finds these files (offline too: HF_HUB_OFFLINE=1)"
    )
    return paths
