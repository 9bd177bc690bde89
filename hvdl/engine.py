"""Minibatch training shared by every family: optimizers, learning-rate schedule, epochs, fits.

`fit(...)` is the Horovod recipe in order: wrap the optimizer so gradients are averaged by ring
allreduce, broadcast parameters and optimizer state from rank 0, then run epochs with the learning
rate scaled by the world size after warm-up, evaluating and checkpointing after each epoch. The
per-step loss stays on the device; it is read once every `log_every` steps, not every step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from hvdl import checkpoint, dist, metrics, sync
from hvdl import config as configlib
from hvdl.config import Config
from hvdl.data.shard import DeviceShard
from hvdl.dist import Context
from hvdl.runlog import RunLog


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


def make_optimizer(params: Any, config: Config, lr: float) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    raise configlib.ConfigError(f"optimizer {config.optimizer!r} cannot train family "
                                f"{config.family!r} by minibatches; allowed: sgd, adam")


@dataclass(frozen=True)
class Schedule:
    """lr(step) = warm-up to lr × ranks, then `constant`, `cosine` decay or `onecycle`."""

    base: float  # single-rank learning rate
    size: int  # world size
    total: int  # steps in the run
    warmup: int  # warm-up steps
    kind: str = "constant"
    scaling: str = "linear"

    def __call__(self, step: int) -> float:
        peak = dist.scaled_lr(self.base, self.size, step, self.warmup, self.scaling)
        if self.kind == "constant" or step < self.warmup:
            return peak
        if self.kind == "onecycle":  # warm-up is the rising half; then linear to zero
            return peak * max(0.0, (self.total - step) / max(1, self.total - self.warmup))
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass
class Stage:
    """One supervised stage (training a classifier or fine-tuning a stack)."""

    name: str  # "train", "finetune", ...: TensorBoard prefix and checkpoint tag
    model: torch.nn.Module
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (output, target) -> mean loss
    epochs: int
    lr: float
    evaluate: Callable[[], dict[str, Any]] | None = None  # collective; returns a report


def train_epoch(stage: Stage, optimizer: torch.optim.Optimizer, shard: DeviceShard,
                schedule: Schedule, *, epoch: int, step: int, run: RunLog, config: Config,
                ) -> tuple[float, int]:
    """One epoch of minibatch steps; returns (mean training loss over ranks, next global step)."""
    stage.model.train()
    total = torch.zeros((), device=shard.x.device)
    window = torch.zeros((), device=shard.x.device)
    started, seen, steps_done = time.perf_counter(), 0, 0
    bar = run.progress(shard.batches(epoch), shard.steps, f"{stage.name} epoch {epoch + 1}")
    for x, y in bar:
        set_lr(optimizer, schedule(step))
        optimizer.zero_grad()
        with torch.autocast(shard.x.device.type, torch.bfloat16, enabled=config.perf.bf16):
            loss = stage.loss(stage.model(x), y if y is not None else x)
        loss.backward()
        optimizer.step()
        total += loss.detach()
        window += loss.detach()
        step += 1
        steps_done += 1
        seen += len(x)
        if steps_done % config.log_every == 0 or steps_done == shard.steps:
            mean = float(window) / ((steps_done - 1) % config.log_every + 1)
            if not math.isfinite(mean):
                raise NonFiniteLoss(f"{stage.name} loss became {mean} at step {step}; lower the "
                                    "learning rate (the last good checkpoint is kept)")
            rate = seen * schedule.size / (time.perf_counter() - started)
            run.scalars({"cost": mean, "lr": schedule(step), "samples_per_s": rate}, step,
                        prefix=f"{stage.name}/")
            window.zero_()
        if config.max_steps and step >= config.max_steps:
            break
    mean_loss = float(total) / max(1, steps_done)
    return dist.average_metrics({"cost": mean_loss}, name=f"{stage.name}.cost")["cost"], step


def fit(stage: Stage, shard: DeviceShard, config: Config, ctx: Context, run: RunLog,
        state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `stage` for its epochs data-parallel; evaluate and checkpoint after each epoch."""
    base = make_optimizer(stage.model.parameters(), config, stage.lr)
    optimizer = sync.wrap(base, stage.model, config)  # gradient or parameter averaging
    if config.perf.compile:
        stage.model.compile()  # in place: state_dict keys and evaluation are unchanged
    start_epoch, step = 0, 0
    if state is not None:
        stage.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step = state["epoch"], state["step"]
    dist.broadcast_state(stage.model, optimizer)
    total = stage.epochs * shard.steps
    schedule = Schedule(stage.lr, ctx.size, total, int(config.warmup_epochs * shard.steps),
                        config.schedule, config.lr_scaling)
    history: list[dict[str, Any]] = []
    for epoch in range(start_epoch, stage.epochs):
        started, first = time.perf_counter(), step
        train_cost, step = train_epoch(stage, optimizer, shard, schedule, epoch=epoch,
                                       step=step, run=run, config=config)
        sync.settle(optimizer)  # one model on every rank before evaluating and checkpointing
        seconds = time.perf_counter() - started
        entry = {"epoch": epoch + 1, "train_cost": train_cost, "seconds": seconds,
                 "samples_per_s": (step - first) * shard.batch_size * ctx.size / seconds}
        if stage.evaluate is not None:
            entry["test"] = stage.evaluate()
            run.scalars(metrics.summary(entry["test"]), step, prefix=f"{stage.name}/test_")
        history.append(entry)
        run.print(epoch_line(stage.name, entry))
        run.record(**{stage.name: history})
        payload = {"model": stage.model.state_dict(), "optimizer": optimizer.state_dict(),
                   "config": configlib.to_dict(config), "stage": stage.name,
                   "epoch": epoch + 1, "step": step, "rng": checkpoint.rng_state()}
        checkpoint.save(run.dir, payload, step=step, keep=config.keep_checkpoints)
        if config.max_steps and step >= config.max_steps:
            break
    return history[-1] if history else {}


def epoch_line(name: str, entry: dict[str, Any]) -> str:
    line = (f"{name} epoch {entry['epoch']}: train cost {entry['train_cost']:.4f}, "
            f"{entry['seconds']:.1f} s, {entry['samples_per_s']:.0f} samples/s")
    test = entry.get("test")
    if test:
        line += f", test cost {test['cost']:.4f}, test accuracy {100 * test['accuracy']:.2f}%"
    return line
