"""How the ranks' copies of a model stay one model: gradient averaging or parameter averaging.

    horovodrun -np 2 python -m hvdl.train --model lenet5                         # fused gradients
    horovodrun -np 2 python -m hvdl.train --model lenet5 --perf.grad_sync hooks  # per-tensor
    horovodrun -np 2 python -m hvdl.train --model lenet5 --perf.sync average --perf.sync_every 4

`wrap(optimizer, model, config)` returns the optimizer that `loop.fit` steps, chosen by
`config.perf`:

- `sync = "allreduce"`, `grad_sync = "fused"` (default): `step()` copies every gradient into one
  flat buffer, averages it with one blocking Horovod allreduce, copies it back and steps. For the
  small models here a step's cost is Horovod's per-tensor coordination, not bandwidth, so one
  tensor a step is the cheapest thing Horovod can be asked to do. One rank skips the collective,
  as Horovod's own optimizer does. `backward_passes_per_step = n` accumulates n minibatches
  locally: every n-th `step()` applies the mean gradient of the n, averaged over ranks.
- `grad_sync = "hooks"`: Horovod's `DistributedOptimizer`, one allreduce per parameter started
  from backward hooks, fused by Horovod's background thread.
- `sync = "average"`: periodic parameter averaging (Spark/DL4J `ParameterAveragingTrainingMaster`,
  MapReduce weight combining). Each rank steps on its own gradients; every `sync_every` = K steps
  the parameters and the optimizer's per-parameter state (momentum, Adam moments) are averaged by
  one allreduce. With K = 1 and SGD this is gradient averaging up to rounding (tests/test_sync.py).

`settle(optimizer)` finishes a pending average or accumulation (the engine calls it after each
epoch, so evaluation and checkpoints see one model); `blocked_seconds(optimizer)` is the time
spent waiting in those collectives. Measured costs: results/bench/README.md.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import torch

from hvdl import dist
from hvdl.config import Config


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]


def _one_dtype(params: list[torch.Tensor]) -> None:
    kinds = {(p.dtype, p.device) for p in params}
    if len(kinds) > 1:
        raise ValueError(f"a flat buffer needs one dtype and device, the parameters have {kinds}; "
                         "use perf.grad_sync = 'hooks'")


class FusedGradients(torch.optim.Optimizer):
    """Mixin over a torch optimizer class: `step()` averages all gradients in one allreduce."""

    def _setup(self, *, fp16: bool, passes: int) -> None:
        self._params = _params(self)
        _one_dtype(self._params)
        self._sizes = [p.numel() for p in self._params]
        like = self._params[0]
        self._flat = torch.zeros(sum(self._sizes), dtype=like.dtype, device=like.device)
        self._sum = torch.zeros_like(self._flat) if passes > 1 else None  # accumulated passes
        self._fp16, self._passes, self._pending = fp16, passes, 0
        self._name = f"sync.grads.{len(self._flat)}"
        self.sync_seconds = 0.0

    def _gather(self) -> torch.Tensor:
        """This rank's gradients as one flat tensor (zeros for a parameter without one)."""
        grads = [p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel())
                 for p in self._params]
        return torch.cat(grads, out=self._flat)  # (n_params,)

    def _scatter(self, flat: torch.Tensor) -> None:
        for p, part in zip(self._params, flat.split(self._sizes)):
            if p.grad is None:
                p.grad = part.view_as(p).clone()
            else:
                p.grad.copy_(part.view_as(p))

    def step(self, closure: Any = None) -> Any:
        if closure is not None:
            raise ValueError("a fused gradient step takes no closure")
        if self._sum is None and dist.world_size() == 1:
            return super().step()  # nothing to average: no copies either
        flat = self._gather()
        self._pending += 1
        if self._sum is not None:
            self._sum += flat
            if self._pending < self._passes:
                return None  # the update waits for the n-th minibatch
            flat = self._sum.div_(self._pending)
        return self._apply(flat)

    def _apply(self, flat: torch.Tensor) -> Any:
        if dist.world_size() > 1:  # asked each step: an elastic job can shrink to one rank
            started = time.perf_counter()
            dist.allreduce_mean_(flat, self._name, fp16=self._fp16)
            self.sync_seconds += time.perf_counter() - started
        self._scatter(flat)
        self._pending = 0
        if self._sum is not None:
            self._sum.zero_()
        return super().step()

    def settle(self) -> None:
        """Apply minibatches accumulated since the last update (every rank has the same count)."""
        if self._sum is not None and self._pending:
            self._apply(self._sum.div_(self._pending))


class ParameterAveraging(torch.optim.Optimizer):
    """Mixin over a torch optimizer class: local steps, parameters averaged every K steps."""

    def _setup(self, *, every: int) -> None:
        self._params = _params(self)
        _one_dtype(self._params)
        self._every, self._local = every, 0
        self.sync_seconds = 0.0

    def _averaged(self) -> list[torch.Tensor]:
        """Parameters, then each one's floating state shaped like it (momentum, Adam moments)."""
        tensors = list(self._params)
        for p in self._params:
            state = self.state.get(p, {})
            tensors += [state[k] for k in sorted(state)
                        if torch.is_tensor(state[k]) and state[k].shape == p.shape
                        and state[k].dtype == p.dtype and state[k].device == p.device]
        return tensors

    def step(self, closure: Any = None) -> Any:
        loss = super().step(closure)
        self._local += 1
        if self._local >= self._every:
            self.settle()
        return loss

    @torch.no_grad()
    def settle(self) -> None:
        """Average parameters and optimizer state now if any local step was taken since."""
        if self._local == 0:
            return
        self._local = 0
        if dist.world_size() == 1:
            return
        tensors = self._averaged()
        flat = torch.cat([t.reshape(-1) for t in tensors])  # (n_params + n_state,)
        started = time.perf_counter()
        dist.allreduce_mean_(flat, f"sync.params.{len(flat)}")
        self.sync_seconds += time.perf_counter() - started
        for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
            t.copy_(part.view_as(t))


def _subclass(mixin: type, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """`optimizer` with `mixin`'s step: a subclass of its class sharing its groups and state."""
    cls = type(optimizer.__class__.__name__, (mixin, optimizer.__class__), {})
    wrapped = cls.__new__(cls)
    wrapped.__dict__.update(optimizer.__dict__)
    return wrapped


def wrap(optimizer: torch.optim.Optimizer, model: torch.nn.Module,
         config: Config) -> torch.optim.Optimizer:
    """The optimizer that keeps the ranks in step as `config.perf` asks (see the docstring)."""
    perf = config.perf
    if getattr(optimizer, "takes_closure", False):
        return optimizer  # minibatch L-BFGS averages its own cost and gradients
    if perf.sync == "average":
        wrapped = _subclass(ParameterAveraging, optimizer)
        wrapped._setup(every=perf.sync_every)
        return wrapped
    if perf.grad_sync == "hooks":
        return dist.distributed_optimizer(optimizer, model, fp16_compression=perf.fp16_compression,
                                          backward_passes_per_step=perf.backward_passes_per_step)
    wrapped = _subclass(FusedGradients, optimizer)
    wrapped._setup(fp16=perf.fp16_compression, passes=perf.backward_passes_per_step)
    return wrapped


def settle(optimizer: torch.optim.Optimizer) -> None:
    """Finish a pending parameter average or gradient accumulation (a collective)."""
    if isinstance(optimizer, (FusedGradients, ParameterAveraging)):
        optimizer.settle()


def blocked_seconds(optimizer: torch.optim.Optimizer) -> float | None:
    """Seconds `optimizer` has waited in its collectives (None for Horovod's own optimizer)."""
    return getattr(optimizer, "sync_seconds", None)


def agreement(model: torch.nn.Module, name: str) -> dict[str, Any]:
    """Whether every rank holds bitwise the same parameters (a collective): a SHA-256 of each
    rank's, gathered."""
    flat = torch.cat([p.detach().reshape(-1).double().cpu() for p in model.parameters()])
    digest = hashlib.sha256(flat.numpy().tobytes()).hexdigest()[:16]
    digests = [digest] if dist.world_size() == 1 else dist.allgather_object(digest, name=name)
    return {"identical": len(set(digests)) == 1, "sha256": digests, "ranks": len(digests)}
