"""L-BFGS that every rank runs in lockstep, full-batch or per minibatch, without broadcasts.

    from hvdl.loop.lbfgs import minimize
    report = minimize(params, objective, iterations=400, history=100)

`objective()` returns the global cost (a 0-d tensor) and sets each parameter's `.grad` to the
global gradient; both are the same on every rank (sums reduced by allreduce), so every rank's
`torch.optim.LBFGS` takes the same step and the parameters stay identical. The trainers check
this at the end with a checksum of the parameters gathered from every rank.

Reference: J. Nocedal, "Updating quasi-Newton matrices with limited storage" (1980), with a
strong-Wolfe line search; UFLDL ran the same method through minFunc (400 iterations).

`torch.optim.LBFGS.step(closure)` runs up to `max_iter` iterations (and `max_eval` cost
evaluations) per call and evaluates the cost once more at its start. `minimize` calls it in
chunks of `chunk` iterations, to log and draw pictures in between; the cost at the accepted point
is evaluated once after each chunk and the next chunk's first evaluation is answered from a cache,
so chunking costs one evaluation per chunk at most.

`MinibatchLBFGS` is the minibatch form that Hinton & Salakhutdinov (2006) fine-tuned their DBN
and deep autoencoder with (conjugate gradients, three line searches on each batch of 1000):
a few L-BFGS iterations on each minibatch, restarted from scratch on the next, the cost and
gradient averaged over ranks by one allreduce per evaluation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from hvdl import dist

Objective = Callable[[], torch.Tensor]  # sets .grad to the global gradient; returns the cost


def set_grads(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
    for p, g in zip(params, grads):
        p.grad = g.detach().view_as(p)


def cached(params: Sequence[torch.Tensor], objective: Objective) -> tuple[Objective, dict]:
    """The objective, answered from memory when the parameters have not changed since the last
    call; the dict counts real evaluations under "evaluations"."""
    memory: dict[str, Any] = {"evaluations": 0}

    def closure() -> torch.Tensor:
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        if "x" in memory and torch.equal(memory["x"], flat):
            set_grads(params, memory["grads"])
            return memory["cost"]
        cost = objective()
        memory.update(x=flat, cost=cost.detach(), grads=[p.grad.clone() for p in params])
        memory["evaluations"] += 1
        return cost

    return closure, memory


def full_batch_optimizer(params: Sequence[torch.Tensor], *, history: int = 100,
                         chunk: int = 50) -> torch.optim.LBFGS:
    """torch's L-BFGS with a strong-Wolfe line search, `chunk` iterations a call."""
    return torch.optim.LBFGS(list(params), lr=1.0, max_iter=chunk, history_size=history,
                             line_search_fn="strong_wolfe")


def minimize(params: Sequence[torch.Tensor], objective: Objective, *, iterations: int,
             history: int = 100, chunk: int | None = None,
             on_chunk: Callable[[int, float], None] | None = None,
             optimizer: torch.optim.LBFGS | None = None, start: int = 0) -> dict[str, Any]:
    """Run L-BFGS up to `iterations` iterations in all; `on_chunk(iterations done, cost)` in
    between. `optimizer` (with its state, as a checkpoint restored it) and `start`, the
    iterations it has done, continue an interrupted run exactly where it stopped.

    Returns {"iterations", "evaluations", "converged", "cost"}; "converged" is true when L-BFGS
    stopped before `iterations` on its own tolerance (gradient or cost change). The last call of
    `objective` is at the returned parameters.
    """
    params = list(params)
    if optimizer is None:
        chunk = max(1, min(chunk or iterations, iterations))
        optimizer = full_batch_optimizer(params, history=history, chunk=chunk)
    chunk = max(1, chunk or optimizer.param_groups[0]["max_iter"])
    closure, memory = cached(params, objective)
    done, converged, cost = start, False, math.nan
    while done < iterations:
        wanted = min(chunk, iterations - done)
        group = optimizer.param_groups[0]
        group["max_iter"] = wanted
        # minFunc's ratio (1000 evaluations for 400 iterations), room for one line search
        group["max_eval"] = max(math.ceil(2.5 * wanted), wanted + 25)
        state = optimizer.state[params[0]]
        evals_before = state.get("func_evals", 0)
        optimizer.step(closure)
        now, used = state["n_iter"], state["func_evals"] - evals_before
        cost = float(closure())  # at the accepted point; the next chunk starts from the cache
        converged = now - done < wanted and used < group["max_eval"]
        done = now
        if on_chunk is not None:
            on_chunk(now, cost)
        if converged:
            break
    optimizer.zero_grad(set_to_none=True)
    return {"iterations": done, "evaluations": memory["evaluations"], "converged": converged,
            "cost": cost}


class MinibatchLBFGS(torch.optim.Optimizer):
    """A few L-BFGS iterations on each minibatch, every rank in lockstep on the global batch.

    `step(closure)` takes a closure that returns this rank's mean loss on its part of the
    minibatch (it need not call backward); every evaluation averages the loss and the gradients
    over ranks in one allreduce, so with equal parts per rank all ranks take the step one
    process would take on the whole minibatch. The curvature history starts afresh each step.
    The learning rate of the param groups is not used (the line search chooses the step).
    """

    takes_closure = True  # loop.train_epoch hands it the batch's loss as a closure

    def __init__(self, params: Any, *, iterations: int = 3, history: int = 10) -> None:
        super().__init__(params, {"lr": 1.0})
        self.iterations, self.history = iterations, history
        self.sync_seconds = 0.0

    def step(self, closure: Objective | None = None) -> torch.Tensor:  # type: ignore[override]
        if closure is None:
            raise ValueError("MinibatchLBFGS.step needs a closure returning the batch's loss")
        params = [p for group in self.param_groups for p in group["params"] if p.requires_grad]

        def objective() -> torch.Tensor:
            for p in params:
                p.grad = None
            with torch.enable_grad():
                loss = closure()
                loss.backward()
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            flat = torch.cat([loss.detach().reshape(1).to(params[0].dtype)]
                             + [g.reshape(-1) for g in grads])  # (1 + n_params,)
            if dist.world_size() > 1:
                started = time.perf_counter()
                dist.allreduce_mean_(flat, f"lbfgs.batch.{len(flat)}")
                self.sync_seconds += time.perf_counter() - started
            set_grads(params, flat[1:].split([p.numel() for p in params]))
            return flat[0]

        report = minimize(params, objective, iterations=self.iterations, history=self.history)
        return torch.tensor(report["cost"])
