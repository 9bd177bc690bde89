"""Minibatch training shared by every family: optimizers, learning-rate schedule, epochs, fits.

`fit(...)` is the Horovod recipe in order: wrap the optimizer so gradients are averaged by ring
allreduce, broadcast parameters and optimizer state from rank 0, then run epochs with the learning
rate scaled by the world size after warm-up, evaluating and checkpointing after each epoch. The
per-step loss stays on the device; it is read once every `log_every` steps, not every step.

Checkpoints (`Checkpointer`) also come every `checkpoint_every` steps and when the ranks agree to
stop on SIGTERM/SIGUSR1 (hvdl/preemption.py). Each records the epoch, the batch reached within it
and every rank's RNG states; the epoch's order comes from `seed + epoch`, so a run resumed from
one continues with the same batches and ends with bit-identical weights on CPU (parameter
averaging and gradient accumulation settle at each checkpoint, which shifts their schedule).
A non-finite loss or model stops every rank at the same step, and is never written over the last
good checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from hvdl import checkpoint, dist, lbfgs, metrics, preemption, sync
from hvdl import config as configlib
from hvdl.config import Config
from hvdl.data.shard import Shard
from hvdl.dist import Context
from hvdl.host import seconds_since_start
from hvdl.runlog import RunLog


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


def make_optimizer(params: Any, config: Config, lr: float) -> torch.optim.Optimizer:
    """The stage's optimizer; `lbfgs` is minibatch L-BFGS (hvdl/lbfgs.py), which averages its
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

    def __call__(self, step: int) -> float:
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


@dataclass
class Stage:
    """One supervised stage (training a classifier or fine-tuning a stack)."""

    name: str  # "train", "finetune", ...: TensorBoard prefix and checkpoint tag
    model: torch.nn.Module
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (output, target) -> mean loss
    epochs: int
    lr: float
    evaluate: Callable[[], dict[str, Any]] | None = None  # collective; returns a report


StepHook = Callable[[int, int], None]  # called after each step with (batch in epoch, step)


def train_epoch(stage: Stage, optimizer: torch.optim.Optimizer, shard: Shard,
                schedule: Schedule, *, epoch: int, step: int, run: RunLog, config: Config,
                start: int = 0, after_step: StepHook | None = None) -> tuple[float, int]:
    """One epoch of minibatch steps from batch `start`; returns (mean loss over ranks, next step).

    Every `log_every` batches the window's loss is averaged over ranks, so a non-finite loss on
    any rank stops every rank at the same step with `NonFiniteLoss`.
    """
    stage.model.train()
    total = torch.zeros((), device=shard.device)
    window = torch.zeros((), device=shard.device)
    started, seen, batch, in_window = time.perf_counter(), 0, start, 0
    bar = run.progress(shard.batches(epoch, start), shard.steps - start,
                       f"{stage.name} epoch {epoch + 1}")
    takes_closure = getattr(optimizer, "takes_closure", False)  # minibatch L-BFGS

    def batch_loss(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(shard.device.type, torch.bfloat16, enabled=config.perf.bf16):
            return stage.loss(stage.model(x), target)

    with contextlib.closing(bar):  # a failed or stopped epoch clears its bar before the message
        for x, y in bar:
            set_lr(optimizer, schedule(step))
            target = y if y is not None else x
            if takes_closure:  # several evaluations of this batch, averaged over ranks
                loss = optimizer.step(lambda x=x, target=target: batch_loss(x, target))
            else:
                optimizer.zero_grad()
                loss = batch_loss(x, target)
                loss.backward()
                optimizer.step()
            total += loss.detach()
            window += loss.detach()
            step, batch, in_window, seen = step + 1, batch + 1, in_window + 1, seen + len(x)
            if step == 1:  # how long a run takes to start training: imports, data, model
                run.record(first_step_s=seconds_since_start())
            if batch % config.log_every == 0 or batch == shard.steps:
                mean = ranks_mean(float(window) / in_window, stage.name, step)
                rate = seen * schedule.size / (time.perf_counter() - started)
                run.scalars({"cost": mean, "lr": schedule(step), "samples_per_s": rate}, step,
                            prefix=f"{stage.name}/")
                window.zero_()
                in_window = 0
            if after_step is not None:
                after_step(batch, step)
            if config.max_steps and step >= config.max_steps:
                break
    return ranks_mean(float(total) / max(1, batch - start), stage.name, step), step


def ranks_mean(loss: float, name: str, step: int) -> float:
    """`loss` averaged over ranks (a collective); NonFiniteLoss on every rank if not finite."""
    mean = dist.average_metrics({"cost": loss}, name=f"{name}.cost")["cost"]
    if not math.isfinite(mean):
        raise NonFiniteLoss(f"{name} loss became {mean} at step {step}; lower the learning rate "
                            "(lr, warmup_epochs) or check the data")
    return mean


@dataclass
class Checkpointer:
    """Writes a stage's training checkpoints and stops the loop on an agreed signal.

    Every rank calls every method at the same steps. `save` is a collective: each rank checks
    its weights are finite and hands in its RNG states, and rank 0 writes. A non-finite model
    raises NonFiniteLoss instead of being saved, so the last good checkpoint always survives.
    """

    stage: Stage
    optimizer: torch.optim.Optimizer
    config: Config
    run: RunLog
    stop: preemption.StopSignal
    steps: int  # batches per epoch
    epoch: int = 0  # the epoch being trained, set by `fit`

    def save(self, batch: int, step: int) -> None:
        """Checkpoint after `batch` batches of epoch `self.epoch` (global step `step`)."""
        sync.settle(self.optimizer)  # one model on every rank (parameter averaging, accumulation)
        finite = all(bool(torch.isfinite(p).all()) for p in self.stage.model.parameters())
        if not dist.all_ranks(finite, name=f"{self.stage.name}.finite"):
            raise NonFiniteLoss(f"{self.stage.name} weights are not finite at step {step}; not "
                                "saved; lower the learning rate (lr, warmup_epochs)")
        rngs = dist.allgather_object(checkpoint.rng_state(), name=f"{self.stage.name}.rng")
        payload = {"model": self.stage.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                   "config": configlib.to_dict(self.config), "stage": self.stage.name,
                   "epoch": self.epoch, "batch": batch, "step": step, "rng": rngs,
                   "data": checkpoint.data_record(self.run.dataset)}
        checkpoint.save(self.run.dir, payload, step=step, keep=self.config.keep_checkpoints)

    def after_step(self, batch: int, step: int) -> None:
        """Mid-epoch checkpoints every `checkpoint_every` steps; save and stop on a signal."""
        if batch == self.steps:  # the epoch's end checkpoints anyway; a stop waits for the next
            return
        every = self.config.checkpoint_every
        saved = bool(every) and step % every == 0
        if saved:
            self.save(batch, step)
        signal_name = self.stop.agreed(step)
        if signal_name:
            if not saved:
                self.save(batch, step)
            self.stopped(signal_name, batch, step)

    def stopped(self, signal_name: str, batch: int, step: int) -> None:
        """Report the stop in the console and metrics.json, then raise Stopped on every rank."""
        self.run.print(f"hvdl: stopped by {signal_name} after step {step} (epoch "
                       f"{self.epoch + 1}, batch {batch}); checkpoint saved, continue with "
                       "--resume")
        stops = self.run.metrics.get("stops", [])
        self.run.record(stops=[*stops, {"signal": signal_name, "step": step,
                                        "epoch": self.epoch, "batch": batch}])
        raise preemption.Stopped(signal_name, step)


def restore(stage: Stage, optimizer: torch.optim.Optimizer, state: dict[str, Any] | None,
            ctx: Context) -> tuple[int, int, int]:
    """Load a checkpoint's model, optimizer and this rank's RNG states; (epoch, batch, step)."""
    if state is None:
        return 0, 0, 0
    stage.model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    rngs = state.get("rng") or []
    rngs = [rngs] if isinstance(rngs, dict) else rngs  # older checkpoints: rank 0's only
    if rngs:
        checkpoint.set_rng_state(rngs[ctx.rank] if ctx.rank < len(rngs) else rngs[0])
    return state["epoch"], state.get("batch", 0), state["step"]


def fit(stage: Stage, shard: Shard, config: Config, ctx: Context, run: RunLog,
        state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `stage` for its epochs data-parallel; evaluate and checkpoint after each epoch.

    Also checkpoints every `checkpoint_every` steps and, on SIGTERM/SIGUSR1, after the step the
    ranks agree on (then raises preemption.Stopped). `state` resumes at its epoch and batch with
    its RNG states: the resumed run ends with the weights of an uninterrupted one.
    """
    base = make_optimizer(stage.model.parameters(), config, stage.lr)
    optimizer = sync.wrap(base, stage.model, config)  # gradient or parameter averaging
    if config.perf.compile:
        stage.model.compile()  # in place: state_dict keys and evaluation are unchanged
    start_epoch, start_batch, step = restore(stage, optimizer, state, ctx)
    dist.broadcast_state(stage.model, optimizer)
    total = stage.epochs * shard.steps
    schedule = Schedule(stage.lr, ctx.size, total, int(config.warmup_epochs * shard.steps),
                        config.schedule, config.lr_scaling)
    history: list[dict[str, Any]] = list(run.metrics.get(stage.name, []))[:start_epoch]
    with preemption.StopSignal(config.stop_check_every) as stop:
        saver = Checkpointer(stage, optimizer, config, run, stop, steps=shard.steps)
        for epoch in range(start_epoch, stage.epochs):
            saver.epoch = epoch
            start = start_batch if epoch == start_epoch else 0
            started, first = time.perf_counter(), step
            train_cost, step = train_epoch(stage, optimizer, shard, schedule, epoch=epoch,
                                           step=step, run=run, config=config, start=start,
                                           after_step=saver.after_step)
            seconds = time.perf_counter() - started
            entry = {"epoch": epoch + 1, "train_cost": train_cost, "seconds": seconds,
                     "samples_per_s": (step - first) * shard.batch_size * ctx.size / seconds}
            history.append(end_epoch(stage, saver, entry, batch=start + step - first, step=step))
            if config.max_steps and step >= config.max_steps:
                break
    return history[-1] if history else {}


def end_epoch(stage: Stage, saver: Checkpointer, entry: dict[str, Any], *, batch: int,
              step: int) -> dict[str, Any]:
    """Evaluate, report and checkpoint after an epoch (or after `max_steps` within one)."""
    run = saver.run
    sync.settle(saver.optimizer)  # one model on every rank before evaluating and checkpointing
    if stage.evaluate is not None:
        entry["test"] = stage.evaluate()
        run.scalars(metrics.summary(entry["test"]), step, prefix=f"{stage.name}/test_")
    run.print(epoch_line(stage.name, entry))
    run.record(**{stage.name: [*run.metrics.get(stage.name, [])[:saver.epoch], entry]})
    if batch == saver.steps:  # a whole epoch: the checkpoint points at the start of the next
        saver.epoch, batch = saver.epoch + 1, 0
    saver.save(batch, step)
    return entry


def epoch_line(name: str, entry: dict[str, Any]) -> str:
    line = (f"{name} epoch {entry['epoch']}: train cost {entry['train_cost']:.4f}, "
            f"{entry['seconds']:.1f} s, {entry['samples_per_s']:.0f} samples/s")
    test = entry.get("test") or {}
    if "cost" in test:
        line += f", test cost {test['cost']:.4f}"
    if "accuracy" in test:
        line += f", test accuracy {100 * test['accuracy']:.2f}%"
    if "squared_error" in test:
        line += f", test squared error {test['squared_error']:.3f}"
    return line
