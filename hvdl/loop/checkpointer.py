"""A stage's checkpoints while it trains: written every `checkpoint_every` steps, at each epoch's
end and when the ranks agree to stop on SIGTERM/SIGUSR1, and read back to resume.

Each checkpoint records the stage, the epoch, the batch reached within it, the step and, for
every rank, its RNG states and its stage's own per-rank state (an RBM's sampling noise and
persistent chain: `RankState`). The epoch's order comes from the seed, so a run resumed from one
continues with the same batches and ends with bit-identical weights on CPU. `save` is a
collective: each rank checks that its weights are finite and hands in its states, and rank 0
writes; a non-finite model raises NonFiniteLoss instead of being saved, so the last good
checkpoint always survives. A full-batch L-BFGS stage checkpoints the same way, its iteration
count standing for the step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from hvdl import checkpoint, dist
from hvdl import config as configlib
from hvdl.config import Config
from hvdl.dist import Context
from hvdl.loop import preemption, sync
from hvdl.runlog import RunLog


class NonFiniteLoss(RuntimeError):
    """The training loss or the weights became NaN or infinite."""


@dataclass(frozen=True)
class RankState:
    """Per-rank state a checkpoint carries besides the RNGs: `get()` a dict of tensors and plain
    values, `put(saved)` restores it."""

    get: Callable[[], dict[str, Any]]
    put: Callable[[dict[str, Any]], None]


@dataclass
class Checkpointer:
    """Writes one stage's checkpoints and stops its loop on an agreed signal.

    Every rank calls every method at the same steps (see the module docstring).
    """

    name: str  # the stage
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    config: Config
    run: RunLog
    stop: preemption.StopSignal
    steps: int  # batches per epoch (0 for full-batch training)
    rank_state: RankState | None = None
    epoch: int = 0  # the epoch being trained
    extra: dict[str, Any] = field(default_factory=dict)  # more of the stage's state, as saved
    saved_at: int = 0  # the step of the last checkpoint (or of the one resumed from)

    def save(self, batch: int, step: int) -> None:
        """Checkpoint after `batch` batches of epoch `self.epoch` (global step `step`)."""
        sync.settle(self.optimizer)  # one model on every rank (parameter averaging, accumulation)
        finite = all(bool(torch.isfinite(p).all()) for p in self.model.parameters())
        if not dist.all_ranks(finite, name=f"{self.name}.finite"):
            raise NonFiniteLoss(f"{self.name} weights are not finite at step {step}; not saved; "
                                "lower the learning rate (lr, warmup_epochs)")
        mine = checkpoint.rng_state()
        if self.rank_state is not None:
            mine["stage"] = self.rank_state.get()
        ranks = dist.allgather_object(mine, name=f"{self.name}.rng")
        payload = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                   "config": configlib.to_dict(self.config), "stage": self.name,
                   "epoch": self.epoch, "batch": batch, "step": step, "rng": ranks,
                   "offset": self.run.steps_before, "data": checkpoint.data_record(
                       self.run.dataset), **self.extra}
        checkpoint.save(self.run.dir, payload, step=self.run.steps_before + step,
                        keep=self.config.keep_checkpoints)
        self.saved_at = step

    def after_step(self, batch: int, step: int) -> None:
        """Mid-epoch checkpoints every `checkpoint_every` steps; save and stop on a signal.
        Full-batch training (`steps` 0) calls it after each chunk of iterations: it saves once
        `checkpoint_every` iterations have passed since the last checkpoint."""
        if self.steps and batch == self.steps:  # the epoch's end checkpoints; a stop waits
            return
        every = self.config.checkpoint_every
        saved = bool(every) and (step % every == 0 if self.steps else
                                 step - self.saved_at >= every)
        if saved:
            self.save(batch, step)
        signal_name = self.stop.agreed(step)
        if signal_name:
            if not saved:
                self.save(batch, step)
            self.stopped(signal_name, batch, step)

    def stopped(self, signal_name: str, batch: int, step: int) -> None:
        """Report the stop in the console and metrics.json, then raise Stopped on every rank."""
        where = f"epoch {self.epoch + 1}, batch {batch}" if self.steps else f"iteration {step}"
        self.run.print(f"hvdl: stopped by {signal_name} after step {step} of {self.name} "
                       f"({where}); checkpoint saved, continue with --resume")
        stops = self.run.metrics.get("stops", [])
        self.run.record(stops=[*stops, {"signal": signal_name, "stage": self.name, "step": step,
                                        "epoch": self.epoch, "batch": batch}])
        raise preemption.Stopped(signal_name, step)


def restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            state: dict[str, Any] | None, ctx: Context,
            rank_state: RankState | None = None) -> tuple[int, int, int]:
    """Load a checkpoint's model, optimizer and this rank's states; (epoch, batch, step)."""
    if state is None:
        return 0, 0, 0
    epoch, batch = resume_point(state)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    ranks = state.get("rng") or []
    ranks = [ranks] if isinstance(ranks, dict) else ranks  # older checkpoints: rank 0's only
    if ranks:
        mine = ranks[ctx.rank] if ctx.rank < len(ranks) else ranks[0]
        checkpoint.set_rng_state(mine)
        if rank_state is not None and "stage" in mine:
            rank_state.put(mine["stage"])
    return epoch, batch, state["step"]


def resume_point(state: dict[str, Any] | None) -> tuple[int, int]:
    """(epoch, batch) where a stage's checkpoint resumes it; (0, 0) without one."""
    return (0, 0) if state is None else (state["epoch"], state.get("batch", 0))
