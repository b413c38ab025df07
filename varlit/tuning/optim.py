"""The tuning run's optimizer: AdamW over the student's trainable tensors and the subject vectors, its
learning-rate schedule (warm-up, then constant, linear or cosine decay) and the manual-optimisation updates
(`ManualUpdates`: accumulation, clipping, finite checks, counted and uncounted steps); the settings are
`OptimConfig`."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import OptimConfig
from .divergence import check_gradients, check_losses


def build_optimizer(
    optim: OptimConfig, model: nn.Module, subject: nn.Module | None, subject_lr: float | None
) -> torch.optim.Optimizer:
    """AdamW with a `model` group (the trainable tensors) and a `subject` group (own lr if given)."""
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "name": "model"}]
    if subject is not None:
        groups.append({"params": list(subject.parameters()), "lr": subject_lr or optim.lr, "name": "subject"})
    return torch.optim.AdamW(
        groups, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay, eps=optim.eps
    )


def lr_factor(optim: OptimConfig, step: int, max_steps: int | None) -> float:
    """Multiplier of every group's lr after `step` optimizer steps: warm-up, then the schedule, which decays
    to 0 at `max_steps` (the trainer's)."""
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.lr_schedule == "constant":
        return 1.0
    if max_steps is None or max_steps <= 0:
        raise ValueError(
            f"optim.lr_schedule={optim.lr_schedule} decays to trainer.max_steps: set max_steps > 0"
        )
    progress = min(1.0, (step - optim.warmup_steps) / max(1, max_steps - optim.warmup_steps))
    return 1.0 - progress if optim.lr_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def _no_closure() -> None:
    """The closure of a manual-optimization step: the backward has already run."""


class ManualUpdates:
    """The optimizer updates of a manually optimised LightningModule, one `step(module, loss)` per loss.

    Under a Trainer: backward of the loss (divided by `accumulate_grad_batches`: the step's gradient is the
    mean over its batches), clipping, a finite-gradient check naming the losses the gradient came from, the
    optimizer step and the lr schedule. Without one (benchmarks), `standalone` is the optimizer: plain
    backward, clipping and step. `micro_batch` counts the batches accumulated since the last update.
    """

    def __init__(self, cfg: OptimConfig):
        self.cfg = cfg
        self.standalone: torch.optim.Optimizer | None = None
        self.micro_batch = 0
        self._pending_losses: list[str] = []  # losses checked since the last update (the gradient's source)
        self._grad_source = ""

    def current_lr(self, module) -> float | None:
        opt = self.standalone if module._trainer is None else module.optimizers()
        return float(opt.param_groups[0]["lr"]) if opt is not None else None

    def check_losses(self, module, **losses: torch.Tensor) -> None:
        """Stop at the first non-finite loss (one line: step, which loss, lr); remembers the gradient's source."""
        check_losses(int(module.global_step), losses, self.current_lr(module))
        self._grad_source = " + ".join([*self._pending_losses, *losses])
        self._pending_losses = [*self._pending_losses, *losses]

    def _check_gradients(self, module, opt) -> None:
        """Stop when the gradient about to be applied is not finite (fp16's loss scaler handles its own)."""
        source, self._pending_losses = self._grad_source or "training", []
        precision = str(module.trainer.precision)
        if "16-mixed" in precision and "bf16" not in precision:
            return
        params = [p for g in opt.param_groups for p in g["params"]]
        check_gradients(int(module.global_step), params, source, self.current_lr(module))

    def step(self, module, loss: torch.Tensor, ends_iteration: bool = True) -> None:
        """Backward and update. `ends_iteration=False` (the instance half of an alternating iteration)
        updates without advancing Lightning's step count, so `global_step` and `max_steps` count iterations."""
        if self.standalone is not None:  # no Trainer (benchmarks)
            opt = self.standalone
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip is not None:
                params = [p for g in opt.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            opt.step()
            return
        opt = module.optimizers()
        k = self.cfg.accumulate_grad_batches
        # With accumulation the step's gradient is the mean over k batches: each contributes loss / k.
        module.manual_backward(loss / k if k > 1 else loss)
        self.micro_batch += 1
        if self.micro_batch < k:
            return
        self.micro_batch = 0
        if self.cfg.grad_clip is not None:
            module.clip_gradients(opt, gradient_clip_val=self.cfg.grad_clip, gradient_clip_algorithm="norm")
        self._check_gradients(module, opt)
        if ends_iteration:
            opt.step()
        else:  # the same update through the strategy (precision plugin included), uncounted
            module.trainer.strategy.optimizer_step(opt.optimizer, closure=_no_closure)
            opt.zero_grad(set_to_none=True)
            return
        opt.zero_grad(set_to_none=True)
        sched = module.lr_schedulers()
        if sched is not None:
            sched.step()
