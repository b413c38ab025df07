"""Ablation sweeps: variant tables, a resumable fit+eval runner, a collector, a multi-GPU launcher, wandb sweeps.

`python -m varlit.sweeps --help` lists the commands; `make ablate-layers|ablate-scales|ablate-distill` run them.
"""

from .definitions import SWEEPS, Sweep, Variant, get_sweep

__all__ = ["SWEEPS", "Sweep", "Variant", "get_sweep"]
