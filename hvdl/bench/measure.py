"""Timing and reporting shared by the benchmark's implementations (hvdl/bench/worker.py runs
plain PyTorch and DDP, hvdl/bench/hvdl_side.py runs hvdl): wall and CPU time of a phase with the
device synchronised, peak memory, and the job's report assembled from every rank's figures.
"""

from __future__ import annotations

import argparse
import resource
import time
from typing import Any, Callable

import torch

from hvdl.bench.plain import SPECS


def sync_device(device: torch.device) -> None:
    """Wait for queued GPU work, so the clock measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """(wall seconds, this thread's CPU seconds) of `run()`."""
    sync_device(device)
    started, cpu = time.perf_counter(), time.thread_time()
    run()
    sync_device(device)
    return time.perf_counter() - started, time.thread_time() - cpu


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory allocated by torch on GPU, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def job_report(args: argparse.Namespace, ranks: list[dict[str, Any]],
               device: torch.device, **extra: Any) -> dict[str, Any]:
    """The job's figures: the slowest rank's step time sets the pace of a synchronous job."""
    batch, size = SPECS[args.model].batch, len(ranks)
    step = max(r["step_s"] for r in ranks)
    computes = [r["compute_s"] for r in ranks if r["compute_s"] is not None]
    blocked = [r["blocked_s"] for r in ranks if r["blocked_s"] is not None]
    compute = max(computes) if computes else step
    allreduce = (sum(blocked) / len(blocked) if blocked else
                 max(0.0, step - compute) if computes else 0.0)
    return {"impl": args.impl, "model": args.model, "ranks": size, "threads": args.threads,
            "batch": batch, "steps": args.steps, "warmup": args.warmup, "device": str(device),
            "step_ms": 1e3 * step, "compute_ms": 1e3 * compute, "allreduce_ms": 1e3 * allreduce,
            "main_cpu_ms": 1e3 * max(r["cpu_s"] for r in ranks),
            "samples_per_s_per_rank": batch / step, "samples_per_s": size * batch / step,
            "peak_memory_mb": max(r["peak_memory_mb"] for r in ranks),
            "per_rank": ranks, **extra}
