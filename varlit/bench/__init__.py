"""Speed and memory benchmarks (`make bench`, `varlit bench`): sampling, VAE, fine-tune step, FLOPs and MFU.

Everything runs on random weights built directly on the device in the run's dtype (bf16 on GPU), so the
real 2B/8B shapes need no download and no float32 copy. Times are medians after warm-up, with
`torch.cuda.synchronize` around every timed call on GPU.

The package, by job:

    flops        analytic FLOP counts (`forward_flops`, `pass_flops`, `train_step_flops`; the formula)
    timing       `measure` (median wall time) and `track_memory`
    env          the device and CPU a report names, autocast for the run's dtype, random text features
    sampling     the sampling measurement            vae          VAE encode and decode
    finetune     the fine-tune step (`build_bench_module`, the seam `bench_module_builder`)
    pretraining  the from-scratch pretraining step   roofline     the bare matmul every rate is read against
    suite        `run_bench`: the chosen measurements, a table and a JSON report
    report       the table and `summarize` (issue 7's targets)
    cli          `varlit bench` and `python -m varlit.bench`

Every name below is importable from `varlit.bench` itself.
"""

from .cli import main
from .env import _autocast as _autocast
from .env import cpu_model, device_info, random_text
from .finetune import bench_finetune, bench_module_builder, build_bench_module
from .flops import (
    PRIOR_SOURCES,
    FlopCount,
    TrainableLayout,
    attention_pairs,
    forward_flops,
    layout_of,
    pass_flops,
    train_step_flops,
)
from .pretraining import bench_pretrain
from .report import TARGETS, format_table, summarize
from .roofline import add_roofline, matmul_tflops
from .sampling import bench_sampling
from .suite import H100_BF16_TFLOPS, run_bench
from .timing import Memory, Timing, measure, track_memory
from .vae import bench_vae

__all__ = [
    "H100_BF16_TFLOPS",
    "PRIOR_SOURCES",
    "TARGETS",
    "FlopCount",
    "Memory",
    "Timing",
    "TrainableLayout",
    "add_roofline",
    "attention_pairs",
    "bench_finetune",
    "bench_module_builder",
    "bench_pretrain",
    "bench_sampling",
    "bench_vae",
    "build_bench_module",
    "cpu_model",
    "device_info",
    "format_table",
    "forward_flops",
    "layout_of",
    "main",
    "matmul_tflops",
    "measure",
    "pass_flops",
    "random_text",
    "run_bench",
    "summarize",
    "track_memory",
    "train_step_flops",
]
