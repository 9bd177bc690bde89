"""A stage's epochs, for static and elastic training alike (hvdl/loop/__init__.py tells the
whole loop): the `Stage`, its optimizer set up and restored (`setup`), one epoch of steps
(`train_epoch`), one epoch with its record, evaluation and checkpoint (`run_epoch`, `end_epoch`),
the epochs of a static run (`run_stage`), and `once`, a stage of a sequence trained once.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from hvdl import checkpoint, dist, metrics
from hvdl.config import Config
from hvdl.data.shard import Shard
from hvdl.dist import Context
from hvdl.host import seconds_since_start
from hvdl.loop import preemption, sync
from hvdl.loop.checkpointer import Checkpointer, NonFiniteLoss, RankState, restore
from hvdl.loop.schedule import Schedule, make_optimizer, set_lr
from hvdl.runlog import RunLog

Batch = tuple[torch.Tensor, torch.Tensor | None]
Update = Callable[[torch.optim.Optimizer, torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass
class Stage:
    """One stage of a run: what it trains, how a step goes, what it reports and carries."""

    name: str  # "train", "pretrain1", "finetune", ...: TensorBoard prefix and checkpoint tag
    model: torch.nn.Module
    epochs: int
    lr: float  # the single-rank rate
    loss: Callable[[Any, torch.Tensor], torch.Tensor] | None = None  # (output, target) -> loss
    update: Update | None = None  # a step of its own: (optimizer, x, y) -> the batch's cost
    optimizer: Callable[[], torch.optim.Optimizer] | None = None  # default: make_optimizer
    evaluate: Callable[[], dict[str, Any]] | None = None  # after each epoch; a collective
    evaluate_as: str = "test"  # where its figures go in the epoch's record ("": the record)
    cost_name: str = "cost"  # what the step's cost is, in records and lines
    schedule: str = ""  # the rate's schedule; "" means config.schedule
    on_epoch: Callable[[int, torch.optim.Optimizer], None] | None = None  # before each epoch
    after_step: Callable[[int], None] | None = None  # after each step (the global step)
    rank_state: RankState | None = None  # per-rank state checkpoints carry
    carry: Callable[[], dict[str, Any]] | None = None  # more of the run that checkpoints carry


def step_function(stage: Stage, optimizer: torch.optim.Optimizer, config: Config,
                  device: torch.device) -> Callable[[torch.Tensor, torch.Tensor | None],
                                                    torch.Tensor]:
    """One update on a batch, returning its cost: the stage's own, L-BFGS's, or backward."""
    if stage.update is not None:
        return lambda x, y: stage.update(optimizer, x, y)

    def batch_loss(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, torch.bfloat16, enabled=config.perf.bf16):
            return stage.loss(stage.model(x), target)

    if getattr(optimizer, "takes_closure", False):  # evaluations averaged over ranks
        return lambda x, y: optimizer.step(lambda: batch_loss(x, x if y is None else y))

    def backward(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        optimizer.zero_grad()
        loss = batch_loss(x, x if y is None else y)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return backward


StepHook = Callable[[int, int], None]  # called after each step with (batch in epoch, step)


def train_epoch(stage: Stage, optimizer: torch.optim.Optimizer, shard: Shard,
                schedule: Schedule, *, epoch: int, step: int, run: RunLog, config: Config,
                start: int = 0, after_step: StepHook | None = None) -> tuple[float, int]:
    """One epoch of minibatch steps from batch `start`; (mean cost over ranks, next step)."""
    stage.model.train()
    total = torch.zeros((), dtype=torch.float64, device=shard.device)
    window = torch.zeros_like(total)
    started, seen, batch, in_window = time.perf_counter(), 0, start, 0
    take = step_function(stage, optimizer, config, shard.device)
    bar = run.progress(shard.batches(epoch, start), shard.steps - start,
                       f"{stage.name} epoch {epoch + 1}")
    with contextlib.closing(bar):  # a failed or stopped epoch clears its bar before the message
        for x, y in bar:
            set_lr(optimizer, schedule(step))
            cost = take(x, y).detach()
            total += cost
            window += cost
            step, batch, in_window, seen = step + 1, batch + 1, in_window + 1, seen + len(x)
            if step == 1:  # how long a run takes to start training: imports, data, model
                run.record(first_step_s=seconds_since_start(), first_step_at=time.time())
            if batch % config.log_every == 0 or batch == shard.steps:
                mean = ranks_mean(float(window) / in_window, stage.name, step)
                elapsed = time.perf_counter() - started
                rate = seen * schedule.size / elapsed
                run.scalars({stage.cost_name: mean, "lr": schedule(step), "samples_per_s": rate},
                            step, prefix=f"{stage.name}/")
                left = elapsed / (batch - start) * (shard.steps - batch)
                run.progress_line(f"{stage.name} epoch {epoch + 1}", batch, shard.steps, rate,
                                  left, mean, stage.cost_name)
                window.zero_()
                in_window = 0
            if stage.after_step is not None:
                stage.after_step(step)
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


def stage_state(stage: str, state: dict[str, Any] | None) -> dict[str, Any] | None:
    """`state` if it is a checkpoint of `stage`, else None (it belongs to another stage)."""
    return state if state is not None and state.get("stage") == stage else None


def completed(name: str, state: dict[str, Any] | None) -> dict[str, Any] | None:
    """The weights of stage `name` if `state` was written after that stage had finished."""
    return ((state or {}).get("stages") or {}).get(name)


def once(name: str, model: torch.nn.Module, state: dict[str, Any] | None, run: RunLog,
         config: Config, train: Callable[[], Any], kept: Callable[[], Any]) -> Any:
    """One stage of a sequence, trained once: if `state` was written after stage `name` had
    finished, its weights come from `state` and its report from `kept()`, else `train()` trains
    it and reports. Either way the finished stage's weights go to stages/<name>.pt."""
    saved = completed(name, state)
    if saved is not None:
        model.load_state_dict(saved)
        report = kept()
    else:
        report = train()
    checkpoint.save_stage(run, name, model, config)
    return report


@dataclass(frozen=True)
class Position:
    """Where a stage has got to: `batch` batches into epoch `epoch`, global step `step`."""

    epoch: int
    batch: int
    step: int


def setup(stage: Stage, config: Config, ctx: Context, run: RunLog,
          state: dict[str, Any] | None, *,
          elastic: bool = False) -> tuple[torch.optim.Optimizer, Position]:
    """The stage's optimizer, synchronised across ranks, and its model, optimizer and rank states
    restored from `state`; the position to go on from. `elastic`: Horovod's own optimizer, whose
    hooks are what its elastic state knows how to synchronise (config_rules refuses the perf
    keys that would ask for another)."""
    base = stage.optimizer() if stage.optimizer else make_optimizer(
        stage.model.parameters(), config, stage.lr)
    if elastic:
        optimizer = dist.distributed_optimizer(base, stage.model,
                                               fp16_compression=config.perf.fp16_compression)
    else:
        optimizer = sync.wrap(base, stage.model, config)  # gradient or parameter averaging
        if config.perf.compile:
            stage.model.compile()  # in place: state_dict keys and evaluation are unchanged
    epoch, batch, step = restore(stage.model, optimizer, state, ctx, stage.rank_state)
    if state is not None:  # the run's step where this stage began
        run.steps_before = state.get("offset", 0)
    return optimizer, Position(epoch, batch, step)


def make_schedule(stage: Stage, config: Config, size: int, steps: int,
                  offset: int = 0) -> Schedule:
    """The stage's rate at each step on `size` ranks taking `steps` batches an epoch."""
    return Schedule(stage.lr, size, stage.epochs * steps, int(config.warmup_epochs * steps),
                    stage.schedule or config.schedule, config.lr_scaling, offset)


def run_stage(stage: Stage, shard: Shard, state: dict[str, Any] | None, config: Config,
              ctx: Context, run: RunLog) -> dict[str, Any]:
    """`fit` on one shard: set up, broadcast rank 0's start, run the epochs."""
    optimizer, at = setup(stage, config, ctx, run, state)
    dist.broadcast_state(stage.model, optimizer)
    schedule = make_schedule(stage, config, ctx.size, shard.steps)
    earlier = run.metrics.get(stage.name, [])[:at.epoch]  # the epochs it had done, if resumed
    final: dict[str, Any] = earlier[-1] if earlier else {}
    if not (config.max_steps and at.step >= config.max_steps):  # else resumed where it stopped
        with preemption.StopSignal(config.stop_check_every) as stop:
            saver = Checkpointer(stage.name, stage.model, optimizer, config, run, stop,
                                 steps=shard.steps, rank_state=stage.rank_state)
            while at.epoch < stage.epochs:
                final, at = run_epoch(stage, saver, shard, schedule, at, size=ctx.size)
                if config.max_steps and at.step >= config.max_steps:
                    break
    run.steps_before += at.step  # the next stage's checkpoints number on from here
    return final


def run_epoch(stage: Stage, saver: Checkpointer, shard: Shard, schedule: Schedule,
              at: Position, *, size: int, after_step: StepHook | None = None,
              more: Callable[[], dict[str, Any]] | None = None) -> tuple[dict[str, Any], Position]:
    """One epoch from `at`: train, then evaluate, report and checkpoint (`end_epoch`); (the
    epoch's record, with `more()`'s figures, and the position after it). Static and elastic
    training both take their epochs through here."""
    saver.epoch, saver.steps = at.epoch, shard.steps
    if stage.on_epoch is not None:
        stage.on_epoch(at.epoch, saver.optimizer)
    saver.extra = {"stages": stage.carry()} if stage.carry else {}
    started = time.perf_counter()
    cost, step = train_epoch(stage, saver.optimizer, shard, schedule, epoch=at.epoch,
                             step=at.step, run=saver.run, config=saver.config, start=at.batch,
                             after_step=after_step or saver.after_step)
    seconds = time.perf_counter() - started
    entry = {"epoch": at.epoch + 1, f"train_{stage.cost_name}": cost, "seconds": seconds,
             "samples_per_s": (step - at.step) * shard.batch_size * size / seconds,
             "step": step, **(more() if more else {})}
    return entry, end_epoch(stage, saver, entry, Position(at.epoch, at.batch + step - at.step,
                                                          step))


def end_epoch(stage: Stage, saver: Checkpointer, entry: dict[str, Any],
              at: Position) -> Position:
    """Evaluate, report and checkpoint after an epoch (or after `max_steps` within one); the
    position to go on from: the next epoch's start after a whole epoch."""
    run = saver.run
    sync.settle(saver.optimizer)  # one model on every rank before evaluating and checkpointing
    if stage.evaluate is not None:
        found = stage.evaluate()
        if stage.evaluate_as:
            entry[stage.evaluate_as] = found
        else:
            entry.update(found)
        prefix = f"{stage.name}/{stage.evaluate_as + '_' if stage.evaluate_as else ''}"
        run.scalars(metrics.summary(found or {}), at.step, prefix=prefix)
    run.print(epoch_line(stage.name, stage.cost_name, entry))
    run.record(**{stage.name: [*run.metrics.get(stage.name, [])[:at.epoch], entry]})
    if at.batch == saver.steps:  # a whole epoch: the checkpoint points at the next one's start
        at = Position(at.epoch + 1, 0, at.step)
    saver.epoch = at.epoch
    saver.save(at.batch, at.step)
    return at


# (key, words, format) of the figures an epoch's line shows when its record has them.
LINE = [("heldout_recon", "held-out recon", "{:.3f}"),
        ("train_free_energy", "free energy train", "{:.2f}"),
        ("heldout_free_energy", "held-out", "{:.2f}"),
        ("test.cost", "test cost", "{:.4f}"), ("test.accuracy", "test accuracy", "{:.2%}"),
        ("test.squared_error", "test squared error", "{:.3f}")]


def epoch_line(name: str, cost_name: str, entry: dict[str, Any]) -> str:
    line = (f"{name} epoch {entry['epoch']}: train {cost_name} "
            f"{entry[f'train_{cost_name}']:.4f}, {entry['seconds']:.1f} s, "
            f"{entry['samples_per_s']:.0f} samples/s")
    for key, words, fmt in LINE:
        value: Any = entry
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            line += f", {words} {fmt.format(value)}"
    return line
