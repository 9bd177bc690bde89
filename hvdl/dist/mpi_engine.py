"""The mpi engine: mpi4py's collectives called directly and synchronously, no background thread.

    mpirun -np 4 python -m hvdl.train                # auto picks it under mpirun, srun, mpiexec
    srun --mpi=pmix python -m hvdl.train

The fused gradient buffer (hvdl/loop/sync.py) is averaged by one in-place `Allreduce` on its own
memory (a NumPy view of the CPU tensor: no copy); states are broadcast in place byte for byte,
objects pickled by mpi4py. The stop agreement is a non-blocking `Iallreduce` (MAX) on a
communicator of its own, which Open MPI progresses during the next steps' collectives.

GPU tensors go to MPI directly when the MPI library is CUDA-aware (Open MPI's
`MPIX_Query_cuda_support`, or HVDL_CUDA_AWARE_MPI=1/0 to say so), after the current stream has
finished writing them; otherwise through a pinned host buffer per size and type (copy to host,
reduce there, copy back without waiting). The project's machine has no GPU, so only the CPU path
has run; tests/test_engines.py has a GPU test of both others, skipped without a CUDA device.
"""

from __future__ import annotations

import ctypes
from typing import Any, Callable

import numpy as np
import torch

from hvdl.dist.base import Engine
from hvdl.host import main_thread_signals


def cuda_aware(environ: dict[str, str]) -> bool:
    """Whether MPI may be handed CUDA memory: HVDL_CUDA_AWARE_MPI, else Open MPI's own answer."""
    if environ.get("HVDL_CUDA_AWARE_MPI") in ("0", "1"):
        return environ["HVDL_CUDA_AWARE_MPI"] == "1"
    try:  # mpi4py loads libmpi into the global namespace; Open MPI >= 2 exports this
        query = ctypes.CDLL(None).MPIX_Query_cuda_support
    except AttributeError:
        return False
    return bool(query())


class MPIEngine(Engine):
    name = "mpi"
    hint = ("allowed: srun --mpi=pmix with an mpi4py built for the MPI that started the job, "
            "or dist.backend torch")
    controller = "mpi"

    def __init__(self, environ: dict[str, str]) -> None:
        import mpi4py

        mpi4py.rc.thread_level = "serialized"  # one thread at a time; hvdl calls from one
        with main_thread_signals():  # MPI's own threads never take SIGTERM/SIGUSR1
            from mpi4py import MPI
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.local = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.stop_comm = self.comm.Dup()  # the stop agreement's Iallreduce, apart from the rest
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.local_rank, self.local_size = self.local.Get_rank(), self.local.Get_size()
        self.cuda_aware = cuda_aware(environ)
        self.ops = {"sum": MPI.SUM, "max": MPI.MAX}
        self._pinned: dict[tuple[torch.dtype, int], torch.Tensor] = {}

    def shutdown(self) -> None:
        self.stop_comm.Free()
        self.local.Free()

    def _in_place(self, tensor: torch.Tensor, call: Callable[[Any], None],
                  as_bytes: bool = False) -> torch.Tensor:
        """`call(buffer)` on `tensor`'s memory: the CPU tensor itself, the CUDA tensor for a
        CUDA-aware MPI, else a pinned host copy that is copied back. `as_bytes`: as uint8."""
        work = tensor if tensor.is_contiguous() else tensor.contiguous()

        def view(t: torch.Tensor) -> torch.Tensor:
            return t.detach().reshape(-1).view(torch.uint8) if as_bytes else t.detach()

        if work.device.type == "cpu":
            call(view(work).numpy())  # the tensor's own memory
        elif self.cuda_aware:
            torch.cuda.current_stream(work.device).synchronize()  # MPI reads what the GPU wrote
            call(view(work))  # mpi4py takes CUDA memory through __cuda_array_interface__
        else:
            host = self._host(work)
            host.copy_(work)  # a blocking copy into pinned memory: the stream is done with it
            call(view(host).numpy())
            work.copy_(host, non_blocking=True)  # the next call's copy to host waits for it
        if work is not tensor:
            tensor.copy_(work)
        return tensor

    def _host(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.dtype, like.numel())
        if key not in self._pinned:
            self._pinned[key] = torch.empty(like.numel(), dtype=like.dtype, pin_memory=True)
        return self._pinned[key].view(like.shape)

    def allreduce_(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        MPI, mpi_op = self.MPI, self.ops[op]
        return self._in_place(tensor, lambda buf: self.comm.Allreduce(MPI.IN_PLACE, buf,
                                                                      op=mpi_op))

    def broadcast_(self, tensor: torch.Tensor, root: int) -> torch.Tensor:
        return self._in_place(tensor, lambda buf: self.comm.Bcast(buf, root=root),
                              as_bytes=True)

    def broadcast_object(self, obj: Any, root: int, name: str) -> Any:
        return self.comm.bcast(obj, root=root)

    def allgather_object(self, obj: Any, name: str) -> list[Any]:
        return self.comm.allgather(obj)

    def barrier(self) -> None:
        self.comm.Barrier()

    def local_barrier(self) -> None:
        self.local.Barrier()

    def start_max(self, value: int, name: str) -> Any:
        send = np.array([value], dtype=np.int64)
        received = np.zeros_like(send)
        request = self.stop_comm.Iallreduce(send, received, op=self.MPI.MAX)
        return request, send, received  # the buffers live as long as the request

    def finish_max(self, handle: Any) -> int:
        request, _, received = handle
        request.Wait()
        return int(received[0])

