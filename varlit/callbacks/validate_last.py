"""Every fit validates at its last step, whatever `val_check_interval` says.

A run shorter than the validation interval (a sweep with STEPS=20 and an interval of 50) would otherwise end
with no validation at all: no metrics, an empty sweep summary. Asking Lightning to stop at the last step is
what makes it validate there (its loop validates when a stop is requested); a run whose interval already
ends on the last step validates once, as before.
"""

from __future__ import annotations

import lightning.pytorch as pl


class ValidateAtLastStep(pl.Callback):
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        last = trainer.max_steps
        if last is not None and last > 0 and trainer.global_step >= last and trainer.limit_val_batches != 0:
            trainer.should_stop = True
