"""What started this process, read from its environment before any engine starts, and the engine
`dist.backend = "auto"` takes for it.

    horovodrun (Gloo, MPI or elastic)   -> horovod
    torchrun (also `srun torchrun`)     -> torch
    mpirun, srun, mpiexec               -> mpi (mpi4py), else horovod, else torch
    none                                -> single

Every rank of a job sees the same launcher variables, so every rank chooses the same engine
without talking to the others (a rank that chose another engine would wait forever). horovodrun
with its MPI controller is an mpirun underneath; it is told apart by the Open MPI settings it
always passes (`-mca pml ob1 -mca btl ^openib`, horovod/runner/mpi_run.py), which reach every
rank as OMPI_MCA_* variables, or by the shell's `_` naming horovodrun.

The torch engine's rendezvous (`torch_place`): torchrun's RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT; Open MPI's OMPI_COMM_WORLD_* with MASTER_ADDR and
MASTER_PORT when set, else rank 0's address broadcast by mpi4py (hvdl/dist/torch_engine.py);
Slurm's SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and SLURM_STEP_TASKS_PER_NODE, with MASTER_ADDR
or else the first host of SLURM_STEP_NODELIST (`scontrol show hostnames`), and MASTER_PORT or
else 15000 + the last four digits of SLURM_JOB_ID.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Mapping

BACKENDS = ("auto", "horovod", "mpi", "torch", "single")

# What only some engines do: the config key and value that ask for it, what it is, the value
# that does without it (`requirements`, `unsupported`).
FEATURES = {
    "elastic": ("elastic", "true", "elastic training", "elastic false"),
    "hooks": ("perf.grad_sync", "'hooks'", "per-tensor hook optimizer", "perf.grad_sync fused"),
    "fp16": ("perf.fp16_compression", "true", "fp16 compression", "perf.fp16_compression false"),
    "timeline": ("perf.timeline", "true", "Horovod timeline", "perf.timeline false"),
}

SETUP = "bash launch/setup.sh (builds Horovod 0.28.1 with PyTorch, MPI and Gloo)"


def launcher(environ: Mapping[str, str]) -> str:
    """horovodrun, torchrun, mpirun, srun, mpiexec (another MPI launcher), or none."""
    if any(k in environ for k in ("HOROVOD_GLOO_RENDEZVOUS_ADDR", "HOROVOD_RANK")) \
            or environ.get("HOROVOD_ELASTIC") == "1":
        return "horovodrun"
    if "TORCHELASTIC_RUN_ID" in environ:
        return "torchrun"
    mpi = any(k in environ for k in ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"))
    if mpi and (os.path.basename(environ.get("_", "")) == "horovodrun"
                or (environ.get("OMPI_MCA_pml") == "ob1"
                    and environ.get("OMPI_MCA_btl") == "^openib")):
        return "horovodrun"
    if "OMPI_COMM_WORLD_SIZE" in environ:
        return "mpirun"
    if "SLURM_PROCID" in environ and "SLURM_STEP_ID" in environ:
        return "srun"
    return "mpiexec" if mpi else "none"


def importable(module: str) -> bool:
    """Whether `module` imports (a broken build counts as missing)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def choose(backend: str, environ: Mapping[str, str], needs: dict[str, str],
           features: Mapping[str, frozenset[str]]) -> tuple[str, str]:
    """(engine, why) for `dist.backend = backend`; `needs`: feature -> the config asking for it,
    `features`: what each engine can do."""
    started = launcher(environ)
    where = f"started by {started}" if started != "none" else "no launcher"
    if backend != "auto":
        return backend, f"dist.backend {backend}; {where}"
    if started == "horovodrun":
        return "horovod", f"{where}; auto"
    if started in ("mpirun", "srun", "mpiexec"):
        engine = next((name for name, module in (("mpi", "mpi4py"), ("horovod", "horovod.torch"))
                       if importable(module)), "torch")
        found = "" if engine == "mpi" else ", mpi4py not importable"
    else:
        engine, found = ("torch" if started == "torchrun" else "single"), ""
    missing = [f"{FEATURES[f][0]} {FEATURES[f][1]}" for f in needs if f not in features[engine]]
    if missing and started != "torchrun" and importable("horovod.torch"):
        return "horovod", f"{where}; {', '.join(missing)} needs Horovod; auto"
    return engine, f"{where}{found}; auto"


def unsupported(engine: str, needs: dict[str, str], features: frozenset[str]) -> str | None:
    """The one-line reason `engine` cannot run this config, or None."""
    for feature in needs:
        if feature not in features:
            key, value, what, instead = FEATURES[feature]
            return (f"config key {key!r} is {value} and the {engine} engine has no {what}; "
                    "allowed: dist.backend horovod (or auto, which picks it when Horovod is "
                    f"installed), or {instead}")
    return None


def requirements(perf: object, elastic: bool) -> dict[str, str]:
    """The features a config asks of its engine (`perf`: the config's perf section)."""
    asked = {"elastic": elastic, "hooks": getattr(perf, "grad_sync", "fused") == "hooks",
             "fp16": bool(getattr(perf, "fp16_compression", False)),
             "timeline": bool(getattr(perf, "timeline", False))}
    return {f: FEATURES[f][0] for f, on in asked.items() if on}


# --- where a torch.distributed rank stands (torch engine) ---------------------------------------

@dataclass(frozen=True)
class Place:
    """A rank's position and its rendezvous, as the launcher announced them."""

    rank: int
    size: int
    local_rank: int
    local_size: int
    addr: str | None  # None: to be agreed (mpirun without MASTER_ADDR)
    port: int | None
    how: str  # "torchrun", "mpirun", "srun" or "none"


def torch_place(environ: Mapping[str, str]) -> Place:
    """This rank's place for torch.distributed, from torchrun, Open MPI or Slurm variables."""
    get = environ.get
    addr = get("MASTER_ADDR") or None
    port = int(get("MASTER_PORT")) if get("MASTER_PORT", "").isdigit() else None
    if "RANK" in environ and "WORLD_SIZE" in environ:  # torchrun, or set by hand
        return Place(int(environ["RANK"]), int(environ["WORLD_SIZE"]), int(get("LOCAL_RANK", 0)),
                     int(get("LOCAL_WORLD_SIZE", get("WORLD_SIZE", 1))), addr or "127.0.0.1",
                     port or 29500, "torchrun")
    if "OMPI_COMM_WORLD_SIZE" in environ:
        return Place(int(environ["OMPI_COMM_WORLD_RANK"]), int(environ["OMPI_COMM_WORLD_SIZE"]),
                     int(get("OMPI_COMM_WORLD_LOCAL_RANK", 0)),
                     int(get("OMPI_COMM_WORLD_LOCAL_SIZE", 1)), addr, port, "mpirun")
    if "SLURM_PROCID" in environ and "SLURM_STEP_ID" in environ:
        job = get("SLURM_JOB_ID", "0")
        return Place(int(environ["SLURM_PROCID"]), int(get("SLURM_NTASKS", 1)),
                     int(get("SLURM_LOCALID", 0)), slurm_local_size(environ),
                     addr or slurm_first_host(environ),
                     port or 15000 + int(job[-4:] if job.isdigit() else 0), "srun")
    return Place(0, 1, 0, 1, None, None, "none")


def slurm_local_size(environ: Mapping[str, str]) -> int:
    """Tasks on this node: the SLURM_NODEID-th entry of SLURM_STEP_TASKS_PER_NODE ("2(x3),1")."""
    spec = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE", "1")
    counts: list[int] = []
    for part in spec.split(","):
        found = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if found:
            counts += [int(found.group(1))] * int(found.group(2) or 1)
    node = int(environ.get("SLURM_NODEID", 0))
    return counts[node] if node < len(counts) else 1


def slurm_first_host(environ: Mapping[str, str]) -> str:
    """The first host of the step's (else the job's) node list, expanded by scontrol."""
    nodes = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or ""
    if shutil.which("scontrol") and nodes:
        out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True,
                             text=True, timeout=30)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    first = re.match(r"([^,\[]+)(?:\[(\d+))?", nodes)  # "node[07-09,12]" -> node07
    return first.group(1) + (first.group(2) or "") if first else "127.0.0.1"
