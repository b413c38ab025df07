"""Per-scale losses at intervals: a CSV row per interval on disk and, with wandb, a table and bar chart.

The module logs every scale's instance and prior loss as scalars each step; this callback adds the view
across scales (which scale carries the loss, how the prior KL spreads) that scalar panels make hard to read.
"""

from __future__ import annotations

import csv

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_only

from .run_dir import run_dir, wandb_run


class PerScaleLosses(pl.Callback):
    """Rows every `every_n_steps` optimizer steps and always for the last step of the run."""

    def __init__(self, every_n_steps: int = 50):
        self.every_n_steps = every_n_steps
        self._last_written: int | None = None

    @rank_zero_only
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self.every_n_steps or step % self.every_n_steps:
            return
        self._write(trainer, pl_module, step)

    @rank_zero_only
    def on_train_end(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module, trainer.global_step)  # short runs get their row too

    def _write(self, trainer, pl_module, step: int) -> None:
        if step == self._last_written:  # accumulated batches of one step end with the same global_step
            return
        losses = getattr(pl_module, "last_step_losses", None)
        if not losses:
            return
        self._last_written = step
        rows = []
        for kind in ("inst_scales", "prior_scales"):
            values = losses.get(kind)
            if values is not None:
                rows += [(step, kind.removesuffix("_scales"), k, float(v)) for k, v in enumerate(values)]
        path = run_dir(trainer) / "per_scale_losses.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with path.open("a", newline="") as f:  # append-only log; a torn last line only loses that row
            w = csv.writer(f)
            if new:
                w.writerow(["step", "loss", "scale", "value"])
            w.writerows(rows)
        run = wandb_run(trainer)
        if run is not None:
            import wandb

            table = wandb.Table(columns=["step", "loss", "scale", "value"], data=[list(r) for r in rows])
            inst = wandb.Table(
                columns=["scale", "value"], data=[[r[2], r[3]] for r in rows if r[1] == "inst"]
            )
            run.log(
                {
                    "per_scale/table": table,
                    "per_scale/instance": wandb.plot.bar(
                        inst, "scale", "value", title=f"instance loss per scale @ {step}"
                    ),
                    "trainer/global_step": step,
                }
            )
