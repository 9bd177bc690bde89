"""Optimizers and learning-rate schedules: what `loop.fit` steps, at which rate.

The rate a stage starts from is the single-rank one; with `lr_scaling = "linear"` it grows to
lr × ranks (the global batch grows with them) by a linear warm-up over `warmup_epochs` (Goyal
et al. 2017), then follows `schedule`: constant, cosine decay to zero, or one cycle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from hvdl import config as configlib
from hvdl.config import Config
from hvdl.loop import lbfgs


def make_optimizer(params: Any, config: Config, lr: float) -> torch.optim.Optimizer:
    """The stage's optimizer; `lbfgs` is minibatch L-BFGS (hvdl/loop/lbfgs.py), which averages its
    own gradients over ranks and ignores the learning rate."""
    if config.optimizer == "lbfgs":
        return lbfgs.MinibatchLBFGS(params, iterations=config.lbfgs_batch_iterations)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    raise configlib.ConfigError(f"optimizer {config.optimizer!r} cannot train family "
                                f"{config.family!r} by minibatches; allowed: sgd, adam, lbfgs")


def scaled_lr(base_lr: float, size: int, step: int, warmup_steps: int,
              scaling: str = "linear") -> float:
    """Learning rate for `step`: `base_lr * size` (linear scaling), reached by linear warm-up.

    Warm-up starts from `base_lr` (the single-rank rate) as in Goyal et al. (2017), so short
    runs and one-rank runs are not slowed.
    """
    target = base_lr * size if scaling == "linear" else base_lr
    if warmup_steps <= 0 or step >= warmup_steps:
        return target
    return base_lr + (target - base_lr) * step / warmup_steps


@dataclass(frozen=True)
class Schedule:
    """lr(step) = warm-up to lr × ranks, then `constant`, `cosine` decay or `onecycle`."""

    base: float  # single-rank learning rate
    size: int  # world size
    total: int  # steps in the run
    warmup: int  # warm-up steps
    kind: str = "constant"
    scaling: str = "linear"
    offset: int = 0  # read at step + offset (elastic: the run's step mapped to this world size's)

    def __call__(self, step: int) -> float:
        step += self.offset
        peak = scaled_lr(self.base, self.size, step, self.warmup, self.scaling)
        if self.kind == "constant" or step < self.warmup:
            return peak
        if self.kind == "onecycle":  # warm-up is the rising half; then linear to zero
            return peak * max(0.0, (self.total - step) / max(1, self.total - self.warmup))
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
