"""The CPU's roofline (`varlit bench --roofline true`).

The world is trained on CPUs, where the question is not the peak of a data sheet but what this machine's
matmul kernels reach at the model's shapes and dtype. `matmul_tflops` measures that (one GEMM of the
FFN's shape: batch x tokens rows, width x 4 width), and every other figure of a run is reported as a
fraction of it: the achieved FLOP rate of a step over the rate of a bare matmul, measured in the same run.
"""

from __future__ import annotations

import torch

from .timing import measure


def matmul_tflops(
    device: torch.device, dtype: torch.dtype, m: int, k: int, n: int, warmup: int = 3, steps: int = 10
) -> dict:
    """Median TFLOP/s of an [m, k] x [k, n] matmul in `dtype` (2 m k n FLOPs per call)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g).to(device, dtype)
    b = torch.randn(k, n, generator=g).to(device, dtype)
    t = measure(lambda: a @ b, device, warmup, steps)
    return {
        "shape": [m, k, n],
        "dtype": str(dtype).removeprefix("torch."),
        "tflops": 2 * m * k * n / t.median_s / 1e12,
    }


def add_roofline(results: dict, device: torch.device, dtype: torch.dtype, rows: int, width: int) -> None:
    """Time the FFN's matmul (`rows` x `width` x 4 `width`) into `results["roofline"]` and give every
    measurement of `results` that has an achieved FLOP rate its `roofline_fraction`."""
    peak = matmul_tflops(device, dtype, rows, width, 4 * width)
    results["roofline"] = peak
    for x in [*results.get("sampling", []), *results.get("finetune", []), results.get("pretrain", {})]:
        if "achieved_tflops" in x:
            x["roofline_fraction"] = x["achieved_tflops"] / peak["tflops"]
