"""The torch engine: torch.distributed, Gloo on CPUs, NCCL on GPUs (with Gloo for CPU tensors).

    torchrun --nproc_per_node 4 -m hvdl.train         # auto picks it under torchrun
    mpirun -np 4 python -m hvdl.train --dist.backend torch
    srun python -m hvdl.train --dist.backend torch    # no --mpi=pmix needed

Ranks come from the launcher's variables (hvdl/dist/launcher.py `torch_place`). torchrun gives
its own rendezvous (`env://`). Under mpirun, MASTER_ADDR and MASTER_PORT are used when set;
otherwise rank 0 picks a free port on its host and mpi4py broadcasts it (127.0.0.1 when every
rank is on one node), so without mpi4py they must be set. Under srun rank 0 listens on the first
host of the step at MASTER_PORT, else 15000 + the last four digits of SLURM_JOB_ID.

A rank that dies closes its sockets, and the others' next collective fails at once, so they
exit and torchrun, mpirun or srun end the job (tests/test_engines.py); a rank that hangs
instead holds the others for HVDL_DIST_TIMEOUT_S seconds (default 1800, torch's own), after
which their collective raises.
"""

from __future__ import annotations

import datetime
import socket
from typing import Any

import torch

from hvdl.dist.base import Engine, LaunchError
from hvdl.dist.launcher import Place, torch_place
from hvdl.host import main_thread_signals, pick_device


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def agree_address(place: Place) -> tuple[str, int]:
    """Rank 0's host and a free port there, broadcast by mpi4py (mpirun without MASTER_ADDR)."""

    try:
        import mpi4py

        mpi4py.rc.thread_level = "serialized"
        with main_thread_signals():
            from mpi4py import MPI
    except ImportError:
        raise LaunchError("the torch engine under mpirun needs MASTER_ADDR and MASTER_PORT, or "
                          "mpi4py to agree on them; allowed: MASTER_ADDR=<rank 0's host> "
                          "MASTER_PORT=<a free port> in every rank's environment (mpirun -x)") \
            from None
    mine = None
    if MPI.COMM_WORLD.Get_rank() == 0:
        one_node = place.local_size == place.size
        mine = ("127.0.0.1" if one_node else socket.gethostname(), free_port())
    return MPI.COMM_WORLD.bcast(mine, root=0)


class TorchEngine(Engine):
    name = "torch"
    features = frozenset({"fp16"})
    hint = ("allowed: torchrun, srun or mpirun, whose variables it reads, or RANK, WORLD_SIZE, "
            "MASTER_ADDR and MASTER_PORT set by hand")

    def __init__(self, environ: dict[str, str]) -> None:
        import torch.distributed as tdist

        self.tdist = tdist
        place = torch_place(environ)
        self.rank, self.size = place.rank, place.size
        self.local_rank, self.local_size = place.local_rank, place.local_size
        device = pick_device(place.local_rank)
        backend = "gloo"
        if device.type == "cuda":  # NCCL before the first collective needs the device pinned
            torch.cuda.set_device(device)
            backend = "cpu:gloo,cuda:nccl"
        self.controller = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=float(environ.get("HVDL_DIST_TIMEOUT_S", 1800)))
        with main_thread_signals():  # Gloo's and NCCL's threads never take SIGTERM/SIGUSR1
            if place.how == "none":  # one process started by hand
                tdist.init_process_group(backend, store=tdist.HashStore(), rank=0, world_size=1)
                return
            if place.how == "torchrun":
                method = "env://"
            else:
                addr, port = (place.addr, place.port) if place.addr else agree_address(place)
                method = f"tcp://{addr}:{port or 29500}"
            tdist.init_process_group(backend, init_method=method, rank=place.rank,
                                     world_size=place.size, timeout=timeout)

    def shutdown(self) -> None:
        self.tdist.barrier()  # nobody tears down the connections while a peer still reads them
        self.tdist.destroy_process_group()

    def allreduce_(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        ReduceOp = self.tdist.ReduceOp
        self.tdist.all_reduce(tensor, op={"sum": ReduceOp.SUM, "max": ReduceOp.MAX}[op])
        return tensor

    def broadcast_(self, tensor: torch.Tensor, root: int) -> torch.Tensor:
        work = tensor if tensor.is_contiguous() else tensor.contiguous()
        self.tdist.broadcast(work.detach(), src=root)
        if work is not tensor:
            tensor.copy_(work)
        return tensor

    def broadcast_object(self, obj: Any, root: int, name: str) -> Any:
        box = [obj]
        self.tdist.broadcast_object_list(box, src=root)
        return box[0]

    def allgather_object(self, obj: Any, name: str) -> list[Any]:
        gathered: list[Any] = [None] * self.size
        self.tdist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        self.tdist.barrier()

    def start_max(self, value: int, name: str) -> Any:
        """In Gloo's thread: the loop goes on while it travels."""
        number = torch.tensor([value], dtype=torch.int64)
        return self.tdist.all_reduce(number, op=self.tdist.ReduceOp.MAX, async_op=True), number

    def finish_max(self, handle: Any) -> int:
        work, number = handle
        work.wait()
        return int(number)
