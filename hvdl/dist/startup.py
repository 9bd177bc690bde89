"""Starting this process's engine: which one (the launcher and `dist.backend`), its settings,
the device and threads, and the `Context` every caller gets. hvdl/dist/__init__.py has the
collectives that run on it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from hvdl.config_rules import ConfigError
from hvdl.dist import launcher, peers
from hvdl.dist.base import Engine, LaunchError, SingleEngine
from hvdl.dist.horovod_engine import KNOBS, HorovodEngine
from hvdl.dist.mpi_engine import MPIEngine
from hvdl.dist.torch_engine import TorchEngine
from hvdl.host import (
    cpu_threads,
    keep_freed_memory,
    launcher_local_rank,
    launcher_size,
    main_thread_signals,
    pick_device,
    pin_gpu,
    whole_lines,
)

ENGINES: dict[str, type[Engine]] = {"horovod": HorovodEngine, "mpi": MPIEngine,
                                    "torch": TorchEngine, "single": SingleEngine}


@dataclass(frozen=True)
class Context:
    """Where this process stands in the job."""

    rank: int
    size: int
    local_rank: int
    local_size: int
    device: torch.device
    threads: int  # torch intra-op threads on CPU
    # horovod: "mpi", "gloo", "elastic" (horovodrun --min-np/--max-np) or "single"; mpi: "mpi";
    # torch: "gloo" or "nccl"; single: "single"
    controller: str
    engine: str = "single"  # the collective engine running: horovod, mpi, torch or single
    reason: str = ""  # why that engine, e.g. "started by mpirun; auto"
    beacon_port: int | None = None  # where this rank answers while it lives (hvdl/dist/peers.py)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def collective(self) -> bool:
        """Whether a collective may run outside the training loop: more than one rank, and not
        elastic training, where a worker that joins later would call it alone."""
        return self.size > 1 and self.controller != "elastic"


class _Active:
    """The process's engine. A module-level slot because the job itself is process-wide: every
    function here reaches it, and callers never pass it around."""

    engine: Engine | None = None
    why = ""
    beacon: peers.Beacon | None = None


def _engine() -> Engine:
    if _Active.engine is None:
        raise RuntimeError("hvdl.dist.init() has not run in this process")
    return _Active.engine


def knobs() -> dict[str, str | None]:
    """The Horovod settings in this process's environment, which Horovod read when it started."""
    return {k: os.environ.get(k) for k in KNOBS}


def requirements(config: Any) -> dict[str, str]:
    """What `config` asks of its engine beyond the basics (elastic, hooks, fp16, timeline)."""
    return launcher.requirements(config.perf, config.elastic)


def start(config: Any, *, training: bool = True) -> Context:
    """The one start-up of `hvdl train`, `eval`, `encode` and the Python API: the engine that
    `config` and the launcher call for, given the config's perf settings. `training`: the engine
    must also have what the run asks of it (elastic, hooks, fp16, timeline); evaluating and
    encoding ask nothing beyond the basics."""
    return init(threads=config.threads or None, backend=config.dist.backend,
                needs=requirements(config) if training else (), perf=config.perf,
                elastic=config.elastic and training)


def init(threads: int | None = None, backend: str = "auto", needs: Iterable[str] = (),
         perf: Any = None, elastic: bool = False) -> Context:
    """Start the engine `backend` (auto: the launcher's; `needs`: features from `requirements`;
    `perf`: the config's perf section, for the engine's own settings), pin the device, set
    threads. A second call returns the running engine's context. (One sequence, in the order
    the engines need it: the GPU pinned before MPI starts, the engine checked once it has.)"""
    environ = dict(os.environ)
    whole_lines()
    needs = {n: launcher.FEATURES[n][0] for n in needs}
    running = _Active.engine
    if running is None:
        pin_gpu(launcher_local_rank(environ))
    if running is None or backend not in ("auto", running.name):
        if running is not None:
            raise LaunchError(f"dist.backend {backend} asked for, but this process already runs "
                              f"the {running.name} engine; allowed: one engine per process")
        features = {name: cls.features for name, cls in ENGINES.items()}
        name, why = launcher.choose(backend, environ, needs, features)
        problem = launcher.unsupported(name, needs, ENGINES[name].features)
        if problem:
            raise ConfigError(problem)
        if perf is not None:
            ENGINES[name].configure(perf, elastic)
        _Active.engine, _Active.why = ENGINES[name](environ), why
    engine = _Active.engine
    expected, var = launcher_size(environ)
    if expected > 1 and engine.size == 1:
        raise LaunchError(f"the launcher started {expected} tasks ({var}={expected}) but the "
                          f"{engine.name} engine sees one; {engine.hint}")
    device = pick_device(engine.local_rank)
    n_threads = threads or cpu_threads(engine.local_size, environ)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(n_threads)
        keep_freed_memory()
    if engine.size > 1 and engine.controller != "elastic" and _Active.beacon is None:
        with main_thread_signals():  # elastic: Horovod replaces lost workers itself
            _Active.beacon = peers.Beacon()
    return Context(**engine.place(), device=device, threads=n_threads,
                   controller=engine.controller, engine=engine.name, reason=_Active.why,
                   beacon_port=_Active.beacon.port if _Active.beacon else None)


def shutdown() -> None:
    if _Active.engine is not None:
        _Active.engine.shutdown()
        _Active.engine = None
    if _Active.beacon is not None:
        _Active.beacon.close()
        _Active.beacon = None


def current(ctx: Context) -> Context:
    """`ctx` with this process's rank and the world size now (they change in elastic training)."""
    return dataclasses.replace(ctx, **_engine().place())
