"""Launching one benchmark job, and telling whether other processes disturbed it.

Used by hvdl/bench/suite.py. A job is one subprocess: `python -m hvdl.bench.worker` for one process,
under horovodrun for hvdl on N ranks, under torchrun for DDP. On a shared machine other
processes steal cores mid-run, so each job's interference is measured: the CPU time the whole
machine spent minus the CPU time of the job's own processes, as a fraction of the machine over
the job's wall time. A job above `--max-interference` is rerun (`--retries` times); every
attempt's interference is kept in bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hvdl import host

# name -> (config.perf overrides, extra environment) of the hvdl variants.
VARIANTS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "hvdl": ({}, {}),  # the defaults: one fused allreduce per step
    "hvdl-hooks": ({"grad_sync": "hooks"}, {}),  # hvd.DistributedOptimizer, per-tensor hooks
    "hvdl-hooks-nofusion": ({"grad_sync": "hooks"}, {"HOROVOD_FUSION_THRESHOLD": "0"}),
    "hvdl-fp16": ({"fp16_compression": "true"}, {}),
    "hvdl-hooks-fp16": ({"grad_sync": "hooks", "fp16_compression": "true"}, {}),
    "hvdl-cycle0.02": ({"cycle_time_ms": "0.02"}, {}),
    "hvdl-cycle0.05": ({"cycle_time_ms": "0.05"}, {}),
    "hvdl-cycle0.1": ({"cycle_time_ms": "0.1"}, {}),
    "hvdl-cycle0.2": ({"cycle_time_ms": "0.2"}, {}),
    "hvdl-cycle0.5": ({"cycle_time_ms": "0.5"}, {}),
    "hvdl-cycle1": ({"cycle_time_ms": "1"}, {}),
    "hvdl-cycle5": ({"cycle_time_ms": "5"}, {}),
    "hvdl-noyield": ({}, {"OMPI_MCA_mpi_yield_when_idle": "0"}),  # Open MPI busy-polls
    "hvdl-average4": ({"sync": "average", "sync_every": "4"}, {}),
    "hvdl-bindcore": ({}, {}),  # each rank (and its Horovod thread) bound to one core
    "hvdl-mpi": ({}, {}),  # the mpi engine: mpi4py's Allreduce, under mpirun
    "hvdl-torch": ({}, {}),  # the torch engine: torch.distributed's Gloo, under torchrun
    "hvdl-single": ({}, {}),  # one process, neither Horovod nor MPI imported (1 rank only)
}

# The collective engine (dist.backend) of each hvdl variant; the others run Horovod under
# horovodrun, or the single engine at one rank (dist.backend auto).
ENGINES = {"hvdl-mpi": "mpi", "hvdl-torch": "torch", "hvdl-single": "single"}

# Open MPI's --bind-to for the hvdl variants under MPI; every other job floats over all cores.
BINDING = {"hvdl-bindcore": "core"}

def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def cpu_busy(seconds: float = 2.0) -> float:
    """Fraction of all CPUs busy over the next `seconds` (Linux /proc/stat; 0 elsewhere)."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)
    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except OSError:
        return 0.0
    return (busy1 - busy0) / max(1, total1 - total0)


def wait_for_quiet(limit: float, threshold: float = 0.15) -> float:
    """Wait up to `limit` seconds for the CPUs to be under `threshold` busy; the last reading."""
    deadline = time.monotonic() + limit
    busy = cpu_busy()
    while busy > threshold and time.monotonic() < deadline:
        busy = cpu_busy()
    return busy


def threads_for(args: argparse.Namespace, ranks: int) -> int:
    return int(args.threads) if args.threads != "auto" else max(1, cores() // ranks)


# glibc's allocator as hvdl sets it (host.keep_freed_memory), given to every implementation so
# that the comparison is between frameworks, not allocator settings.
MALLOC = host.MALLOC_ENV


def job_env(threads: int, extra: dict[str, str], malloc: bool = True) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    if malloc:
        env.update(MALLOC)
    else:  # glibc's own behaviour everywhere, hvdl's ranks included
        env["HVDL_MALLOC"] = "default"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # Open MPI refuses root without these
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env.update(extra)
    return env


def command(impl: str, ranks: int, worker: list[str], controller: str) -> list[str]:
    """The launcher line: python for one process; for N: horovodrun for hvdl, mpirun for its mpi
    engine, torchrun for its torch engine and DDP."""
    python = [sys.executable, "-m", "hvdl.bench.worker", *worker]
    if impl == "ddp" or (impl == "hvdl-torch" and ranks > 1):  # DDP at 1 rank: torchrun too
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(ranks), *python[1:]]
    if ranks == 1:
        return python
    if impl == "hvdl-mpi":
        return ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(ranks),
                *(["--allow-run-as-root"] if os.geteuid() == 0 else []), *python]
    horovodrun = str(Path(sys.executable).parent / "horovodrun")
    mpi_args = [f"--mpi-args=--oversubscribe --bind-to {BINDING.get(impl, 'none')}" +
                (" --allow-run-as-root" if os.geteuid() == 0 else "")] \
        if controller == "mpi" else []
    return [horovodrun, f"--{controller}", *mpi_args, "-np", str(ranks), "-H",
            f"localhost:{ranks}", *python]


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of all CPUs since boot (Linux /proc/stat; zeros elsewhere)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except OSError:
        return 0.0, 0.0
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / hz, sum(fields) / hz


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def launch(cmd: list[str], env: dict[str, str], timeout: float,
           ) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run `cmd`; (process, wall seconds, share of the machine other processes used)."""
    busy0, total0 = machine_cpu()
    ours0, started = children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - started
    busy1, total1 = machine_cpu()
    other = (busy1 - busy0) - (children_cpu() - ours0)
    return proc, wall, max(0.0, other) / max(1e-9, total1 - total0)


def worker_args(args: argparse.Namespace, model: str, impl: str, ranks: int, repeat: int,
                report: Path) -> list[str]:
    worker = ["--impl", "hvdl" if impl.startswith("hvdl") else impl, "--model", model,
              "--steps", str(args.steps), "--warmup", str(args.warmup),
              "--threads", str(threads_for(args, ranks)), "--report", str(report)]
    if impl in ENGINES:
        worker += ["--engine", ENGINES[impl]]
    perf = VARIANTS.get(impl, ({}, {}))[0]
    if perf:
        worker += ["--perf", *(f"{k}={v}" for k, v in perf.items())]
    if args.timeline and impl.startswith("hvdl") and ranks > 1 and repeat == 0:
        worker += ["--horovod-timeline",
                   str(Path(args.out).resolve() / f"timeline-{model}-{impl}-{ranks}.json")]
    return worker


def run_one(args: argparse.Namespace, model: str, impl: str, ranks: int,
            repeat: int, scratch: Path) -> dict[str, Any]:
    """Launch one job (again while others disturb it) and return its report or its error."""
    threads = threads_for(args, ranks)
    report = scratch / f"{model}-{impl}-{ranks}-{repeat}.json"
    cmd = command(impl, ranks, worker_args(args, model, impl, ranks, repeat, report),
                  args.controller)
    env = job_env(threads, VARIANTS.get(impl, ({}, {}))[1], malloc=args.malloc == "tuned")
    entry: dict[str, Any] = {"model": model, "impl": impl, "ranks": ranks, "repeat": repeat,
                             "threads": threads, "command": " ".join(cmd), "attempts": []}
    for _ in range(args.retries + 1):
        report.unlink(missing_ok=True)
        wait_for_quiet(args.quiet_wait)
        proc, wall, other = launch(cmd, env, timeout=600 + 5 * args.steps)
        entry["attempts"].append(other)
        entry.update(wall_s=wall, interference=other, load=os.getloadavg()[0])
        if proc.returncode != 0 or not report.is_file():
            output = proc.stdout + proc.stderr
            entry["error"] = output if len(output) < 6000 else output[:3000] + "\n...\n" + \
                output[-3000:]
            return entry
        if other <= args.max_interference:
            break
    entry["report"] = json.loads(report.read_text())
    return entry
