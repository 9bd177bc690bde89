"""Full-batch L-BFGS as a stage (sae, stacked_ae): the same checkpoints, stop and NaN guard as
the minibatch loop, a chunk of iterations standing for a step."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from hvdl.config import Config
from hvdl.dist import Context
from hvdl.loop import lbfgs, preemption
from hvdl.loop.checkpointer import Checkpointer, NonFiniteLoss, restore
from hvdl.loop.epochs import stage_state
from hvdl.runlog import RunLog


def fit_full_batch(name: str, model: torch.nn.Module, objective: lbfgs.Objective, *,
                   iterations: int, config: Config, ctx: Context, run: RunLog,
                   state: dict[str, Any] | None = None, history: int = 100,
                   chunk: int = 50, on_chunk: Callable[[int, float], None] | None = None,
                   carry: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Full-batch L-BFGS on `objective` (the same step on every rank: hvdl/lbfgs.py), in chunks of
    `chunk` iterations; after each chunk the NaN guard, a checkpoint every `checkpoint_every`
    iterations and the agreed stop; resumed from `state` bit for bit."""
    params = list(model.parameters())
    optimizer = lbfgs.full_batch_optimizer(params, history=history, chunk=chunk)
    state = stage_state(name, state)
    _, _, done = restore(model, optimizer, state, ctx)
    if state is not None:  # the run's step where this stage began
        run.steps_before = state.get("offset", 0)
    if state is not None and (done >= iterations or state.get("converged")):
        run.steps_before += done
        return dict(state.get("report", {}))
    with preemption.StopSignal(every=1) as stop:  # agree at every chunk's end
        saver = Checkpointer(name, model, optimizer, config, run, stop, steps=0, saved_at=done)

        def after_chunk(now: int, cost: float) -> None:
            if not math.isfinite(cost):  # the global cost: every rank sees the same
                raise NonFiniteLoss(f"{name} cost became {cost} at iteration {now}; lower "
                                    "the weight decay or check the data")
            if on_chunk is not None:
                on_chunk(now, cost)
            saver.extra = {"stages": carry()} if carry else {}
            saver.after_step(0, now)  # a checkpoint when due; save and stop on a signal

        report = lbfgs.minimize(params, objective, iterations=iterations, optimizer=optimizer,
                                start=done, on_chunk=after_chunk)
        saver.extra = {"stages": carry()} if carry else {}
        saver.extra.update(converged=report["converged"], report=report)
        saver.save(0, report["iterations"])  # the stage's end: a resume goes on after it
    run.steps_before += report["iterations"]
    return report
