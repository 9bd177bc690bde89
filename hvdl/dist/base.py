"""What every collective engine does, built from a few primitives, and the one-process engine.

An engine subclasses `Engine`, sets its place in the job in `__init__`, and implements the
primitives: `allreduce_` (in place, sum or max), `broadcast_` (in place), `broadcast_object`,
`allgather_object`, `barrier`. Everything hvdl asks of the job (means, state broadcasts, the
stop agreement) is built from them here, so engines differ only where they must. Engines whose
library does more (Horovod's hook optimizer, timeline, elastic state) override the rest.
"""

from __future__ import annotations

from typing import Any

import torch

from hvdl.config_rules import ConfigError
from hvdl.errors import BadInput


class LaunchError(BadInput):
    """The launcher and the engine disagree about the job (a Gloo-only build under srun, say)."""


class PeersLost(RuntimeError):
    """A collective failed under this rank because another rank or its host is gone."""


class Engine:
    """One process's connection to the job. Every rank calls the collectives in the same order."""

    name = ""
    features: frozenset[str] = frozenset()  # of launcher.FEATURES: what it does beyond the basics
    hint = ""  # what to check when the launcher announced more tasks than the engine sees
    rank, size, local_rank, local_size, controller = 0, 1, 0, 1, ""

    @classmethod
    def configure(cls, perf: Any, elastic: bool) -> None:
        """Set what the engine reads as it starts (its environment) from the config's `perf`
        section, before it is made; most engines read nothing."""

    def place(self) -> dict[str, int]:
        """Rank and sizes now (they change only in elastic training)."""
        return {"rank": self.rank, "size": self.size, "local_rank": self.local_rank,
                "local_size": self.local_size}

    def shutdown(self) -> None:
        """Leave the job (every rank, at the end of a successful run)."""

    # --- primitives --------------------------------------------------------------------------

    def allreduce_(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        """Reduce `tensor` over ranks in place, `op` "sum" or "max"."""
        raise NotImplementedError

    def broadcast_(self, tensor: torch.Tensor, root: int) -> torch.Tensor:
        """Overwrite `tensor` with rank `root`'s."""
        raise NotImplementedError

    def broadcast_object(self, obj: Any, root: int, name: str) -> Any:
        raise NotImplementedError

    def allgather_object(self, obj: Any, name: str) -> list[Any]:
        raise NotImplementedError

    def barrier(self) -> None:
        raise NotImplementedError

    def local_barrier(self) -> None:
        """Wait for the ranks of this node (here: all of them, which includes those)."""
        self.barrier()

    # --- built from them ---------------------------------------------------------------------

    def allreduce_sum(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        return self.allreduce_(tensor.detach().clone(memory_format=torch.contiguous_format),
                               "sum")

    def allreduce_mean(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        return self.allreduce_sum(tensor, name).div_(self.size)

    def allreduce_mean_(self, tensor: torch.Tensor, name: str, fp16: bool) -> torch.Tensor:
        """Average in place; `fp16` sends it as float16 (the sum rounded to ~3 digits)."""
        if fp16 and tensor.dtype != torch.float16:
            half = self.allreduce_(tensor.to(torch.float16), "sum")
            return tensor.copy_(half).div_(self.size)
        return self.allreduce_(tensor, "sum").div_(self.size)

    def broadcast_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                        root: int) -> None:
        """Rank `root`'s parameters and buffers in place; its optimizer state if there is any
        (a fresh optimizer has none; resumed ranks hold the same, loaded from one checkpoint)."""
        for tensor in model.state_dict().values():
            self.broadcast_(tensor, root)
        if optimizer is not None and optimizer.state_dict()["state"]:
            state = _to_cpu(optimizer.state_dict()) if self.rank == root else None
            state = self.broadcast_object(state, root, "optimizer.state")
            if self.rank != root:
                optimizer.load_state_dict(state)  # moved to each parameter's device and dtype

    def start_max(self, value: int, name: str) -> Any:
        """Start a max over ranks of one number; `finish_max` gives it. Here: done at once."""
        return self.allreduce_(torch.tensor([value], dtype=torch.int64), "max")

    def finish_max(self, handle: Any) -> int:
        return int(handle)

    # --- Horovod's alone (hvdl/dist/horovod_engine.py) -----------------------------------------

    def distributed_optimizer(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module,
                              fp16_compression: bool,
                              backward_passes_per_step: int) -> torch.optim.Optimizer:
        raise self._horovod_only("perf.grad_sync 'hooks' (Horovod's DistributedOptimizer)")

    def start_timeline(self, path: str) -> None:
        raise self._horovod_only("perf.timeline (Horovod's timeline)")

    def stop_timeline(self) -> None:
        raise self._horovod_only("perf.timeline (Horovod's timeline)")

    def elastic_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                      values: dict[str, Any]) -> Any:
        raise self._horovod_only("elastic training")

    def elastic_run(self, func: Any) -> Any:
        raise self._horovod_only("elastic training")

    def _horovod_only(self, what: str) -> ConfigError:
        return ConfigError(f"{what} needs the horovod engine and this run has {self.name}; "
                           "allowed: dist.backend horovod (or auto under horovodrun)")


def _to_cpu(value: Any) -> Any:
    """A state dict with its tensors copied to the CPU, to pickle."""
    if torch.is_tensor(value):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


class SingleEngine(Engine):
    """One process: every collective is the identity. Imports no Horovod and no MPI."""

    name = "single"
    # Nothing to average, so a hook optimizer is the optimizer and fp16 sends nothing.
    features = frozenset({"hooks", "fp16"})
    hint = "allowed: dist.backend auto, mpi, torch or horovod under a launcher, single alone"
    controller = "single"

    def __init__(self, environ: dict[str, str]) -> None:
        pass

    def allreduce_(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        return tensor

    def broadcast_(self, tensor: torch.Tensor, root: int) -> torch.Tensor:
        return tensor

    def broadcast_object(self, obj: Any, root: int, name: str) -> Any:
        return obj

    def allgather_object(self, obj: Any, name: str) -> list[Any]:
        return [obj]

    def barrier(self) -> None:
        pass

    def broadcast_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                        root: int) -> None:
        pass

    def distributed_optimizer(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module,
                              fp16_compression: bool,
                              backward_passes_per_step: int) -> torch.optim.Optimizer:
        return optimizer  # as Horovod's at one rank: no hooks, the optimizer's own step
