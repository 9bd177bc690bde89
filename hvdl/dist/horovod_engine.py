"""The horovod engine: Horovod's collectives, hook optimizer, timeline and elastic API.

    horovodrun -np 4 python -m hvdl.train                      # Gloo or MPI controller
    mpirun -np 4 python -m hvdl.train --dist.backend horovod   # Horovod under a plain MPI job

Under an MPI launcher mpi4py initialises MPI with MPI_THREAD_MULTIPLE and hands COMM_WORLD to
Horovod, whose background thread then calls MPI; mpi4py's node-local communicator lets one rank
per node prepare data while the others wait. Under horovodrun's Gloo controller there is no MPI
job, so Horovod's own collectives do both. The only engine for elastic training, the per-tensor
hook optimizer (`perf.grad_sync = "hooks"`) and the timeline.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from hvdl.dist.base import Engine, LaunchError
from hvdl.dist.launcher import SETUP
from hvdl.host import main_thread_signals

KNOBS = ("HOROVOD_FUSION_THRESHOLD", "HOROVOD_CYCLE_TIME", "HOROVOD_TIMELINE")


def set_knobs(perf: Any, elastic: bool) -> None:
    """Horovod reads these when it starts, so they are set before it is made (`perf`: the
    config's perf section)."""
    if not elastic:  # Horovod 0.28.1 segfaults re-initialising after an elastic reset with
        # both set (tests/test_elastic.py); elastic runs keep Horovod's defaults.
        os.environ.setdefault("HOROVOD_FUSION_THRESHOLD",
                              str(perf.fusion_threshold_mb * 1024 * 1024))
        os.environ.setdefault("HOROVOD_CYCLE_TIME", str(perf.cycle_time_ms))
    if perf.timeline:  # lets `start_timeline` begin one once the run folder exists
        os.environ.setdefault("HOROVOD_TIMELINE", "DYNAMIC")


def uses_mpi(environ: dict[str, str]) -> bool:
    """Whether this process was started by an MPI launcher (mpirun, srun --mpi, horovodrun+MPI)."""
    if "HOROVOD_GLOO_RENDEZVOUS_ADDR" in environ:  # horovodrun --gloo, or elastic
        return False
    return any(k in environ for k in ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"))


def mpi_for_horovod() -> Any:
    import mpi4py

    mpi4py.rc.thread_level = "multiple"  # Horovod's MPI controller calls MPI from its own thread
    # Horovod's background thread meets the other ranks in an MPI collective every cycle; Open
    # MPI busy-polls while it waits, taking the core from this rank's training thread unless
    # told to yield (results/bench/README.md measures it). Read by MPI_Init, at import.
    os.environ.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
    from mpi4py import MPI

    return MPI


def import_horovod() -> Any:
    """horovod.torch, or a LaunchError saying how to install it."""

    try:
        import horovod.torch as hvd
    except ImportError as err:
        raise LaunchError(f"the horovod engine needs Horovod, which does not import here "
                          f"({err}); allowed: install it with {SETUP}, or dist.backend auto, "
                          "mpi, torch or single") from None
    return hvd


class HorovodEngine(Engine):
    name = "horovod"
    features = frozenset({"elastic", "hooks", "fp16", "timeline"})
    hint = ("this Horovod was probably built without MPI (check `horovodrun --check-build`), "
            "or srun was not given --mpi=pmix")

    @classmethod
    def configure(cls, perf: Any, elastic: bool) -> None:
        set_knobs(perf, elastic)

    def __init__(self, environ: dict[str, str]) -> None:
        self.hvd = hvd = import_horovod()
        self.local_comm = None
        if uses_mpi(environ):
            with main_thread_signals():
                MPI = mpi_for_horovod()
                hvd.init(comm=MPI.COMM_WORLD)
            self.controller = "mpi"
            self.local_comm = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED)
        else:
            with main_thread_signals():
                hvd.init()
            self.controller = "gloo"
            if environ.get("HOROVOD_ELASTIC") == "1":
                self.controller = "elastic"
            elif hvd.size() == 1 and "HOROVOD_GLOO_RENDEZVOUS_ADDR" not in environ:
                self.controller = "single"

    @property  # type: ignore[override]
    def rank(self) -> int:
        return self.hvd.rank()

    @property  # type: ignore[override]
    def size(self) -> int:
        return self.hvd.size()

    @property  # type: ignore[override]
    def local_rank(self) -> int:
        return self.hvd.local_rank()

    @property  # type: ignore[override]
    def local_size(self) -> int:
        return self.hvd.local_size()

    def shutdown(self) -> None:
        if self.local_comm is not None:
            self.local_comm.Free()
            self.local_comm = None
        self.hvd.shutdown()

    def allreduce_(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        hvd = self.hvd
        return hvd.allreduce_(tensor, op={"sum": hvd.Sum, "max": hvd.Max}[op])

    def broadcast_(self, tensor: torch.Tensor, root: int) -> torch.Tensor:
        return self.hvd.broadcast_(tensor, root_rank=root)

    def broadcast_object(self, obj: Any, root: int, name: str) -> Any:
        return self.hvd.broadcast_object(obj, root_rank=root, name=name)

    def allgather_object(self, obj: Any, name: str) -> list[Any]:
        return self.hvd.allgather_object(obj, name=name)

    def barrier(self) -> None:
        self.hvd.barrier()

    def local_barrier(self) -> None:
        if self.local_comm is not None:
            self.local_comm.Barrier()
        else:
            self.hvd.barrier()

    def allreduce_sum(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        return self.hvd.allreduce(tensor, op=self.hvd.Sum, name=name)

    def allreduce_mean(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        return self.hvd.allreduce(tensor, op=self.hvd.Average, name=name)

    def allreduce_mean_(self, tensor: torch.Tensor, name: str, fp16: bool) -> torch.Tensor:
        """One blocking Horovod allreduce in place; `fp16`: Horovod's fp16 compression."""
        hvd = self.hvd
        if fp16 and tensor.dtype != torch.float16:
            half = tensor.to(torch.float16)
            hvd.allreduce_(half, op=hvd.Average, name=name)
            return tensor.copy_(half)
        return hvd.allreduce_(tensor, op=hvd.Average, name=name)

    def broadcast_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                        root: int) -> None:
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=root)
        # A fresh optimizer has no state to share, and Horovod would fill it with a zero-gradient
        # step (which weight decay turns into a real update); resumed ranks all hold the state.
        if optimizer is not None and optimizer.state_dict()["state"]:
            self.hvd.broadcast_optimizer_state(optimizer, root_rank=root)

    def start_max(self, value: int, name: str) -> Any:
        """In Horovod's background thread: the loop never waits for it."""
        hvd = self.hvd
        return hvd.allreduce_async(torch.tensor([value], dtype=torch.int64), op=hvd.Max, name=name)

    def finish_max(self, handle: Any) -> int:
        return int(self.hvd.synchronize(handle))

    def distributed_optimizer(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module,
                              fp16_compression: bool,
                              backward_passes_per_step: int) -> torch.optim.Optimizer:
        hvd = self.hvd
        compression = hvd.Compression.fp16 if fp16_compression else hvd.Compression.none
        return hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                        compression=compression,
                                        backward_passes_per_step=backward_passes_per_step,
                                        op=hvd.Average)

    def start_timeline(self, path: str) -> None:
        self.hvd.start_timeline(path, mark_cycles=True)

    def stop_timeline(self) -> None:
        self.hvd.stop_timeline()

    def elastic_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                      values: dict[str, Any]) -> Any:
        hvd = self.hvd

        class State(hvd.elastic.TorchState):
            def sync(self) -> None:
                super().sync()
                # Horovod broadcasts the model, then the optimizer: an optimizer with no state
                # yet (a joining worker's) gets it from a step with zero gradients first, which
                # weight decay (the RBM's weight cost) turns into a step of the parameters, and
                # the ranks then differ for the rest of the run. Rank 0's model once more.
                hvd.broadcast_parameters(model.state_dict(), root_rank=0)

        return State(model=model, optimizer=optimizer, **values)

    def elastic_run(self, func: Any) -> Any:
        from horovod.common.elastic import run_fn

        def reset() -> None:  # Horovod's own reset, with its new threads spared our signals
            with main_thread_signals():
                self.hvd.shutdown()
                self.hvd.init()

        return run_fn(func, reset)
