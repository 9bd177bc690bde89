"""Every Horovod, mpi4py and torch.distributed call in hvdl lives in this package.

The rest of hvdl asks these functions for rank, size and device, to average a metric, to
broadcast a state, to wrap an optimizer, and never imports an engine's library itself. `init`
starts one engine for the process (`dist.backend`, hvdl/config.py) and every function below
hands its work to it:

    horovod  Horovod (horovod_engine.py): the only one for elastic training, the per-tensor hook
             optimizer (perf.grad_sync = "hooks") and the timeline
    mpi      mpi4py called directly and synchronously (mpi_engine.py)
    torch    torch.distributed, Gloo on CPUs and NCCL on GPUs (torch_engine.py)
    single   one process, no Horovod and no MPI imported (base.py)
    auto     the one the launcher implies (launcher.py): horovodrun -> horovod, mpirun and
             srun -> mpi, torchrun -> torch, none -> single

    python -m hvdl.train                                  # single
    horovodrun -np 4 python -m hvdl.train                 # horovod
    mpirun -np 4 python -m hvdl.train                     # mpi
    torchrun --nproc_per_node 4 -m hvdl.train             # torch
    mpirun -np 4 python -m hvdl.train --dist.backend torch

An engine is a class (base.py's `Engine`: a few primitives, the rest built on them) and one entry
in ENGINES (startup.py, which also starts it). Every rank runs the same sequence of collectives, whichever engine it has.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any, Iterator

import torch

from hvdl.dist import peers
from hvdl.dist.base import LaunchError, PeersLost
from hvdl.dist.startup import (
    ENGINES,
    Context,
    _engine,
    current,
    init,
    knobs,
    requirements,
    shutdown,
    start,
)

__all__ = ["ENGINES", "Context", "LaunchError", "PeersLost", "current", "init", "knobs",
           "requirements", "shutdown", "start"]  # and the collectives below


# --- collectives: every rank must call these in the same order ----------------------------------

def allreduce_sum(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """Sum `tensor` over ranks (returns a new tensor)."""
    return _engine().allreduce_sum(tensor, name)


def allreduce_mean(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """Average `tensor` over ranks (returns a new tensor)."""
    return _engine().allreduce_mean(tensor, name)


def average_metrics(metrics: dict[str, float], name: str = "metrics") -> dict[str, float]:
    """Average a dict of scalars over ranks with one allreduce."""
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    mean = allreduce_mean(values, name=name)
    return {k: float(v) for k, v in zip(keys, mean)}


def broadcast_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    root: int = 0) -> None:
    """Give every rank rank 0's parameters, buffers and optimizer state."""
    _engine().broadcast_state(model, optimizer, root)


def broadcast_object(obj: Any, root: int = 0, name: str = "object") -> Any:
    """Give every rank rank 0's picklable `obj`."""
    return _engine().broadcast_object(obj, root, name)


def allgather_object(obj: Any, name: str = "gather") -> list[Any]:
    """Collect one picklable object from every rank, in rank order, on every rank."""
    return _engine().allgather_object(obj, name)


def barrier() -> None:
    _engine().barrier()


def world_size() -> int:
    """Ranks in the running job (`init` must have run)."""
    return _engine().size


def allreduce_mean_(tensor: torch.Tensor, name: str, fp16: bool = False) -> torch.Tensor:
    """Average `tensor` over ranks in place with one blocking allreduce (sync.py's flat buffer).

    `fp16` sends it as float16 (half the bytes, ~3 digits kept).
    """
    return _engine().allreduce_mean_(tensor, name, fp16)


def start_timeline(path: str | os.PathLike | None) -> None:
    """Start recording Horovod's timeline (chrome://tracing JSON, cycle starts marked) to `path`.

    Every rank calls it; only the coordinator, rank 0, writes the file, so the other ranks may
    pass None. Horovod allows it after `init` only if HOROVOD_TIMELINE=DYNAMIC was set before.
    """
    _engine().start_timeline(str(path or "horovod_timeline.json"))


def stop_timeline() -> None:
    _engine().stop_timeline()


def distributed_optimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module, *,
                          fp16_compression: bool = False,
                          backward_passes_per_step: int = 1) -> torch.optim.Optimizer:
    """Wrap `optimizer` so `step()` uses gradients averaged over ranks by Horovod's hooks."""
    return _engine().distributed_optimizer(optimizer, model, fp16_compression,
                                           backward_passes_per_step)


# --- node-local coordination and inventory -------------------------------------------------------

@contextlib.contextmanager
def local_root_first(ctx: Context) -> Iterator[None]:
    """Run the body on local rank 0 of each node first (e.g. to unpack data), then on the rest."""
    if not ctx.collective:
        yield
        return
    wait = _engine().local_barrier
    if ctx.local_rank != 0:
        wait()
    try:
        yield
    finally:  # a failed body on local rank 0 still lets the others go on (and fail too)
        if ctx.local_rank == 0:
            wait()


def inventory(ctx: Context) -> list[dict[str, Any]]:
    """Host, device and thread count of every rank, in rank order (a collective)."""
    mine = {"rank": ctx.rank, "local_rank": ctx.local_rank, "host": socket.gethostname(),
            "device": str(ctx.device), "threads": ctx.threads, "beacon_port": ctx.beacon_port}
    if ctx.device.type == "cuda":
        mine["device_name"] = torch.cuda.get_device_name(ctx.device)
    if not ctx.collective:
        return [mine]
    return allgather_object(mine, name="inventory")


def check_peers(err: BaseException, ctx: Context, inventory: list[dict[str, Any]]) -> None:
    """Raise PeersLost naming the ranks and hosts that stopped answering when `err` ended this
    rank's training in a multi-rank job and some peer is gone; return if every peer answers (then
    `err` is this rank's own failure, reported as it is)."""
    if ctx.beacon_port is None:
        return
    gone = peers.missing(inventory, ctx.rank)
    if gone:
        raise PeersLost(f"the {ctx.engine} engine failed on rank {ctx.rank} "
                        f"({socket.gethostname()}): " + "; ".join(gone)) from err


def all_ranks(flag: bool, name: str) -> bool:
    """True when `flag` is true on every rank (a collective, so every rank gets the same answer)."""
    return float(allreduce_sum(torch.tensor([0.0 if flag else 1.0]), name=name)) == 0.0


def start_max(value: int, name: str) -> Any:
    """Start a Max allreduce of one number (in the background where the engine can);
    `finish_max` waits for it."""
    return _engine().start_max(value, name)


def finish_max(handle: Any) -> int:
    """The largest of the ranks' values, once every rank has started the allreduce."""
    return _engine().finish_max(handle)


def check_finite(value: torch.Tensor, name: str = "finite") -> bool:
    """True when `value` is finite on every rank (a collective, so every rank agrees)."""
    bad = torch.tensor([0.0 if math.isfinite(float(value)) else 1.0])
    return float(allreduce_sum(bad, name=name)) == 0.0


# --- elastic training (horovodrun --min-np --max-np --host-discovery-script; Gloo) ---------------

def elastic_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, **values: Any) -> Any:
    """Horovod's TorchState: model, optimizer and `values`, committed in memory, synced on joins."""
    return _engine().elastic_state(model, optimizer, values)


def elastic_run(func: Any) -> Any:
    """Horovod's `@hvd.elastic.run`: rerun `func(state)` from the last commit after a reset."""
    return _engine().elastic_run(func)
