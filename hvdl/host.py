"""This process's place on its machine: what the launcher announced, threads, device, signals,
the allocator. No Horovod, mpi4py or torch.distributed here; hvdl/dist/ calls these while it
initialises.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from typing import TYPE_CHECKING, Iterator, Mapping

if TYPE_CHECKING:
    import torch

# glibc's allocator as hvdl sets it: keep freed blocks up to 32 MiB (M_MMAP_THRESHOLD, glibc's
# largest allowed value) and up to 1 GiB of freed heap (M_TRIM_THRESHOLD). The same settings
# as environment variables, for processes that are not hvdl's (hvdl/bench/launch.py).
MMAP_THRESHOLD, TRIM_THRESHOLD = 32 * 2**20, 2**30
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
              "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}

# The launcher environment variables that announce the number of tasks.
_LAUNCHER_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE", "SLURM_NTASKS",
                       "HOROVOD_SIZE")


def _torchrun(environ: Mapping[str, str]) -> tuple[str, ...]:
    """torchrun's variables, trusted only under torchrun (RANK alone is too common a name)."""
    return ("RANK", "WORLD_SIZE") if "TORCHELASTIC_RUN_ID" in environ else ("", "")


def launcher_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's rank as the launcher announces it, readable before any engine starts."""
    environ = os.environ if environ is None else environ
    for var in ("HOROVOD_RANK", _torchrun(environ)[0], "OMPI_COMM_WORLD_RANK", "PMIX_RANK",
                "PMI_RANK", "SLURM_PROCID"):
        if environ.get(var, "").isdigit():
            return int(environ[var])
    return 0


def launcher_local_rank(environ: Mapping[str, str] | None = None) -> int | None:
    """This process's rank on its node as the launcher announces it, before any engine starts
    (None when no launcher says)."""
    environ = os.environ if environ is None else environ
    torchrun = "LOCAL_RANK" if "TORCHELASTIC_RUN_ID" in environ else ""
    for var in ("HOROVOD_LOCAL_RANK", torchrun, "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID",
                "SLURM_LOCALID"):
        if environ.get(var, "").isdigit():
            return int(environ[var])
    return None


def launcher_size(environ: Mapping[str, str] | None = None) -> tuple[int, str | None]:
    """Return (tasks, variable) as announced by the launcher; (1, None) when none says."""
    environ = os.environ if environ is None else environ
    for var in (*_LAUNCHER_SIZE_VARS, _torchrun(environ)[1]):
        value = environ.get(var, "")
        if value.isdigit() and int(value) > 1:
            # SLURM_NTASKS describes the allocation; only trust it inside a job step (srun).
            if var == "SLURM_NTASKS" and "SLURM_STEP_ID" not in environ:
                continue
            return int(value), var
    return 1, None


def cpu_threads(local_size: int, environ: dict[str, str] | None = None) -> int:
    """Torch threads per rank: the task's CPUs under Slurm, else this node's cores / local ranks."""
    environ = os.environ if environ is None else environ
    if environ.get("HVDL_THREADS", "").isdigit():
        return max(1, int(environ["HVDL_THREADS"]))
    if environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return max(1, int(environ["SLURM_CPUS_PER_TASK"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # Affinity may already be narrowed to this rank's cores by the launcher's binding.
    total = os.cpu_count() or 1
    if cores and cores < total:
        return max(1, cores)
    return max(1, total // max(1, local_size))


def pick_device(local_rank: int) -> torch.device:
    """`cuda:<local rank>`, or `cuda:0` when the scheduler shows each task one GPU, else CPU."""
    import torch  # here, so that launchers can use this module without loading torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    return torch.device("cuda", local_rank if local_rank < count else 0)


def pin_gpu(local_rank: int | None) -> None:
    """Make this rank's GPU the current device before an engine starts: a CUDA-aware MPI (and
    NCCL) binds each process to the device current at its start, and some put every rank on
    GPU 0 otherwise. Nothing on a machine without CUDA or without a launcher's local rank."""
    import torch

    if local_rank is not None and torch.cuda.is_available():
        torch.cuda.set_device(pick_device(local_rank))


@contextlib.contextmanager
def main_thread_signals() -> Iterator[None]:
    """Threads started in the body (Horovod's, MPI's) never receive SIGTERM or SIGUSR1.

    A signal handled in Python may be delivered to any thread; one landing in Horovod's
    background thread interrupts its socket calls and shuts Horovod down on that rank (seen with
    Gloo). Threads inherit the signal mask of their creator, so they are created with these
    signals blocked, and only the main thread, which runs hvdl/loop/preemption.py's handler,
    gets them.
    """
    blocked = {signal.SIGTERM, signal.SIGUSR1}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def whole_lines() -> None:
    """Write standard output and error a line at a time, each line in one write.

    Under horovodrun, mpirun and srun the launcher tags what each rank writes; unbuffered
    streams (PYTHONUNBUFFERED=1, `python -u`, as job scripts often set) write a line's text and
    its newline separately, and the tag then lands in the middle of the line ("cost
    11.72[1,0]<stdout>:"). Line buffering keeps every line whole and still flushes each one.
    """
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True, write_through=False)


def keep_freed_memory() -> None:
    """Have glibc keep freed blocks of up to 32 MiB in the heap rather than unmap them.

    A CPU training step frees and reallocates the same activation buffers; left to glibc, large
    blocks go back to the system and each step faults their pages in again. Without this,
    LeNet-5 under hvdl ran 8% slower on one rank and 25% slower on two on the project's 2-core
    machine (results/bench/README.md, `hvdl bench --malloc default`). MALLOC_MMAP_THRESHOLD_
    in the environment wins, HVDL_MALLOC=default leaves glibc alone, and off glibc this does
    nothing.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or os.environ.get("HVDL_MALLOC") == "default":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, TRIM_THRESHOLD)  # M_TRIM_THRESHOLD


def peak_rss_mb() -> float:
    """The most resident memory this process has held so far, in MiB (Linux: ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def seconds_since_start() -> float:
    """Seconds since this process started (its start-up, imports and data included). On Linux
    from field 22 of /proc/self/stat (clock ticks since boot) against the boot-time clock: to a
    tick; psutil's start time adds whole seconds of boot time, up to a second off."""
    import time

    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rpartition(")")[2].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, AttributeError):  # not Linux
        import psutil

        return time.time() - psutil.Process().create_time()


def rss_mb() -> float:
    """This process's resident memory now, in MiB."""
    try:
        import psutil
    except ImportError:  # Linux without psutil
        return _proc_kib("/proc/self/status", "VmRSS:") / 1024
    return psutil.Process().memory_info().rss / 2**20


def available_bytes() -> int:
    """Memory the machine can still give without swapping."""
    try:
        import psutil
    except ImportError:  # Linux without psutil
        return _proc_kib("/proc/meminfo", "MemAvailable:") * 1024
    return psutil.virtual_memory().available


def _proc_kib(path: str, key: str) -> int:
    with open(path) as lines:
        return next(int(line.split()[1]) for line in lines if line.startswith(key))
