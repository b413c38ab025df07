"""What a benchmark runs on and with: the device and CPU it reports, autocast for the run's dtype, random
text features in place of T5's."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from ..models.infinity import InfinityConfig
from ..models.text import TextBatch


def device_info(device: torch.device) -> dict:
    info = {
        "type": device.type,
        "name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(cuda=torch.version.cuda, memory_gb=round(props.total_memory / 2**30, 1))
    if hasattr(os, "getloadavg"):
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    return info


def cpu_model() -> str:
    """The CPU's model name (Linux), else what `platform` knows."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        cpuinfo = ""
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def random_text(
    cfg: InfinityConfig, batch: int, text_len: int, device: torch.device, dtype: torch.dtype, seed: int
) -> TextBatch:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, text_len, cfg.text_channels, generator=g) * 0.2
    return TextBatch(
        feats.to(device, dtype), torch.full((batch,), text_len, dtype=torch.int64, device=device)
    )


def _autocast(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
