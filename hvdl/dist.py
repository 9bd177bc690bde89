"""Every Horovod and mpi4py call in hvdl lives here.

The rest of the package asks this module for rank, size and device, to average a metric, to
broadcast a state, to wrap an optimizer, and never imports horovod or mpi4py itself.

Launchers that work (all end up in `init`):

    python -m hvdl.train                          # one process
    horovodrun -np 4 python -m hvdl.train         # Horovod's launcher, MPI or Gloo controller
    mpirun -np 4 python -m hvdl.train             # Open MPI
    srun --mpi=pmix python -m hvdl.train          # Slurm

Under an MPI launcher mpi4py initialises MPI with MPI_THREAD_MULTIPLE and hands COMM_WORLD to
Horovod; its node-local communicator then lets one rank per node prepare data while the others
wait, and gathers the host and device inventory written into each run's metadata. Under
horovodrun's Gloo controller there is no MPI job, so Horovod's own collectives do both jobs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import socket
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from hvdl.errors import BadInput
from hvdl.host import (cpu_threads, keep_freed_memory, launcher_size, main_thread_signals,
                       pick_device, whole_lines)


class LaunchError(BadInput):
    """The launcher and Horovod disagree about the job (a Gloo-only build under srun, say)."""


@dataclass(frozen=True)
class Context:
    """Where this process stands in the job."""

    rank: int
    size: int
    local_rank: int
    local_size: int
    device: torch.device
    threads: int  # torch intra-op threads on CPU
    controller: str  # "mpi", "gloo", "elastic" (horovodrun --min-np/--max-np) or "single"

    @property
    def is_root(self) -> bool:
        return self.rank == 0


def _uses_mpi(environ: dict[str, str]) -> bool:
    """Whether this process was started by an MPI launcher (mpirun, srun --mpi, horovodrun+MPI)."""
    if "HOROVOD_GLOO_RENDEZVOUS_ADDR" in environ:  # horovodrun --gloo, or elastic
        return False
    return any(k in environ for k in ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"))


def _mpi() -> Any:
    import mpi4py

    mpi4py.rc.thread_level = "multiple"  # Horovod's MPI controller calls MPI from its own thread
    # Horovod's background thread meets the other ranks in an MPI collective every cycle; Open
    # MPI busy-polls while it waits, taking the core from this rank's training thread unless
    # told to yield (results/bench/README.md measures it). Read by MPI_Init, at import.
    os.environ.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
    from mpi4py import MPI

    return MPI


def _hvd() -> Any:
    import horovod.torch as hvd

    return hvd


def set_horovod_knobs(perf: Any, *, elastic: bool = False) -> None:
    """Horovod reads these when it starts, so they are set before `init` (`perf`: the config's
    perf section)."""
    if not elastic:  # Horovod 0.28.1 segfaults re-initialising after an elastic reset with
        # both set (tests/test_elastic.py); elastic runs keep Horovod's defaults.
        os.environ.setdefault("HOROVOD_FUSION_THRESHOLD",
                              str(perf.fusion_threshold_mb * 1024 * 1024))
        os.environ.setdefault("HOROVOD_CYCLE_TIME", str(perf.cycle_time_ms))
    if perf.timeline:  # lets `start_timeline` begin one once the run folder exists
        os.environ.setdefault("HOROVOD_TIMELINE", "DYNAMIC")


KNOBS = ("HOROVOD_FUSION_THRESHOLD", "HOROVOD_CYCLE_TIME", "HOROVOD_TIMELINE")


def knobs() -> dict[str, str | None]:
    """The Horovod settings in this process's environment, which Horovod read when it started."""
    return {k: os.environ.get(k) for k in KNOBS}


def init(threads: int | None = None) -> Context:
    """Initialise Horovod (through mpi4py under MPI launchers), pin the device, set threads."""
    environ = dict(os.environ)
    whole_lines()
    hvd = _hvd()
    controller = "gloo"
    if _uses_mpi(environ):
        with main_thread_signals():
            MPI = _mpi()
            hvd.init(comm=MPI.COMM_WORLD)
        controller = "mpi"
    else:
        with main_thread_signals():
            hvd.init()
        if environ.get("HOROVOD_ELASTIC") == "1":
            controller = "elastic"
        elif hvd.size() == 1 and "HOROVOD_GLOO_RENDEZVOUS_ADDR" not in environ:
            controller = "single"
    expected, var = launcher_size(environ)
    if expected > 1 and hvd.size() == 1:
        raise LaunchError(
            f"the launcher started {expected} tasks ({var}={expected}) but Horovod sees one; "
            "this Horovod was probably built without MPI (check `horovodrun --check-build`), "
            "or srun was not given --mpi=pmix")
    device = pick_device(hvd.local_rank())
    n_threads = threads or cpu_threads(hvd.local_size(), environ)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(n_threads)
        keep_freed_memory()
    return Context(rank=hvd.rank(), size=hvd.size(), local_rank=hvd.local_rank(),
                   local_size=hvd.local_size(), device=device, threads=n_threads,
                   controller=controller)


def shutdown() -> None:
    _hvd().shutdown()


def current(ctx: Context) -> Context:
    """`ctx` with this process's rank and the world size now (they change in elastic training)."""
    hvd = _hvd()
    return dataclasses.replace(ctx, rank=hvd.rank(), size=hvd.size(),
                               local_rank=hvd.local_rank(), local_size=hvd.local_size())


# --- collectives: every rank must call these in the same order ----------------------------------

def allreduce_sum(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """Sum `tensor` over ranks (returns a new tensor)."""
    hvd = _hvd()
    return hvd.allreduce(tensor, op=hvd.Sum, name=name)


def allreduce_mean(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """Average `tensor` over ranks (returns a new tensor)."""
    hvd = _hvd()
    return hvd.allreduce(tensor, op=hvd.Average, name=name)


def average_metrics(metrics: dict[str, float], name: str = "metrics") -> dict[str, float]:
    """Average a dict of scalars over ranks with one allreduce."""
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    mean = allreduce_mean(values, name=name)
    return {k: float(v) for k, v in zip(keys, mean)}


def broadcast_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    root: int = 0) -> None:
    """Give every rank rank 0's parameters, buffers and optimizer state."""
    hvd = _hvd()
    hvd.broadcast_parameters(model.state_dict(), root_rank=root)
    # A fresh optimizer has no state to share, and Horovod would fill it with a zero-gradient
    # step (which weight decay turns into a real update); resumed ranks all hold the state.
    if optimizer is not None and optimizer.state_dict()["state"]:
        hvd.broadcast_optimizer_state(optimizer, root_rank=root)


def broadcast_object(obj: Any, root: int = 0, name: str = "object") -> Any:
    """Give every rank rank 0's picklable `obj`."""
    return _hvd().broadcast_object(obj, root_rank=root, name=name)


def allgather_object(obj: Any, name: str = "gather") -> list[Any]:
    """Collect one picklable object from every rank, in rank order, on every rank."""
    return _hvd().allgather_object(obj, name=name)


def barrier() -> None:
    _hvd().barrier()


def world_size() -> int:
    """Ranks in the running job (Horovod's view; `init` must have run)."""
    return _hvd().size()


def allreduce_mean_(tensor: torch.Tensor, name: str, fp16: bool = False) -> torch.Tensor:
    """Average `tensor` over ranks in place with one blocking Horovod allreduce.

    `fp16` sends it as float16 (Horovod's fp16 compression: half the bytes, ~3 digits kept).
    """
    hvd = _hvd()
    if fp16 and tensor.dtype != torch.float16:
        half = tensor.to(torch.float16)
        hvd.allreduce_(half, op=hvd.Average, name=name)
        return tensor.copy_(half)
    return hvd.allreduce_(tensor, op=hvd.Average, name=name)


def start_timeline(path: str | os.PathLike | None) -> None:
    """Start recording Horovod's timeline (chrome://tracing JSON, cycle starts marked) to `path`.

    Every rank calls it; only the coordinator, rank 0, writes the file, so the other ranks may
    pass None. Horovod allows it after `init` only if HOROVOD_TIMELINE=DYNAMIC was set before.
    """
    _hvd().start_timeline(str(path or "horovod_timeline.json"), mark_cycles=True)


def stop_timeline() -> None:
    _hvd().stop_timeline()


def distributed_optimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module, *,
                          fp16_compression: bool = False,
                          backward_passes_per_step: int = 1) -> torch.optim.Optimizer:
    """Wrap `optimizer` so `step()` uses gradients averaged over ranks by ring allreduce."""
    hvd = _hvd()
    compression = hvd.Compression.fp16 if fp16_compression else hvd.Compression.none
    return hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                    compression=compression,
                                    backward_passes_per_step=backward_passes_per_step,
                                    op=hvd.Average)


# --- node-local coordination and inventory (mpi4py's job under MPI) ------------------------------

@contextlib.contextmanager
def local_root_first(ctx: Context) -> Iterator[None]:
    """Run the body on local rank 0 of each node first (e.g. to unpack data), then on the rest."""
    if ctx.size == 1 or ctx.controller == "elastic":  # elastic: no collective before the loop
        yield
        return
    if ctx.controller == "mpi":
        local = _mpi().COMM_WORLD.Split_type(_mpi().COMM_TYPE_SHARED)
        wait = local.Barrier
    else:
        local, wait = None, barrier
    try:
        if ctx.local_rank != 0:
            wait()
        try:
            yield
        finally:  # a failed body on local rank 0 still lets the others go on (and fail too)
            if ctx.local_rank == 0:
                wait()
    finally:
        if local is not None:
            local.Free()


def inventory(ctx: Context) -> list[dict[str, Any]]:
    """Host, device and thread count of every rank, in rank order (a collective)."""
    mine = {"rank": ctx.rank, "local_rank": ctx.local_rank, "host": socket.gethostname(),
            "device": str(ctx.device), "threads": ctx.threads}
    if ctx.device.type == "cuda":
        mine["device_name"] = torch.cuda.get_device_name(ctx.device)
    if ctx.controller == "mpi":
        return _mpi().COMM_WORLD.allgather(mine)
    if ctx.size == 1 or ctx.controller == "elastic":  # a worker that joins later runs this alone
        return [mine]
    return allgather_object(mine, name="inventory")


def all_ranks(flag: bool, name: str) -> bool:
    """True when `flag` is true on every rank (a collective, so every rank gets the same answer)."""
    return float(allreduce_sum(torch.tensor([0.0 if flag else 1.0]), name=name)) == 0.0


def start_max(value: int, name: str) -> Any:
    """Start a Max allreduce of one number in the background; `finish_max` waits for it."""
    hvd = _hvd()
    return hvd.allreduce_async(torch.tensor([value], dtype=torch.int64), op=hvd.Max, name=name)


def finish_max(handle: Any) -> int:
    """The largest of the ranks' values, once every rank has started the allreduce."""
    return int(_hvd().synchronize(handle))


def check_finite(value: torch.Tensor, name: str = "finite") -> bool:
    """True when `value` is finite on every rank (a collective, so every rank agrees)."""
    bad = torch.tensor([0.0 if math.isfinite(float(value)) else 1.0])
    return float(allreduce_sum(bad, name=name)) == 0.0


# --- elastic training (horovodrun --min-np --max-np --host-discovery-script; Gloo) ---------------

def elastic_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, **values: Any) -> Any:
    """Horovod's TorchState: model, optimizer and `values`, committed in memory, synced on joins."""
    return _hvd().elastic.TorchState(model=model, optimizer=optimizer, **values)


def elastic_run(func: Any) -> Any:
    """Horovod's `@hvd.elastic.run`: rerun `func(state)` from the last commit after a reset."""
    from horovod.common.elastic import run_fn

    def reset() -> None:  # Horovod's own reset, with its new threads spared our signals
        with main_thread_signals():
            _hvd().shutdown()
            _hvd().init()

    return run_fn(func, reset)
