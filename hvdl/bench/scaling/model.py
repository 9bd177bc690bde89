"""The model behind the projections: the ring allreduce cost, its fit to measurements, the
published links, each family's compute and gradient size, and the efficiency they give."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SIZES = [2**10 * 4**k for k in range(9)]  # 1 KiB, 4 KiB, ..., 64 MiB
RANKS = [2**k for k in range(1, 11)]  # 2 .. 1024
FLOOR = 0.5  # a family "stops gaining" where each added rank gives less than half a rank


@dataclass(frozen=True)
class Link:
    """A link's ring-allreduce constants: α seconds per step, β seconds per byte."""

    name: str
    alpha: float
    beta: float
    source: str


# Published links. β is the line rate (one direction); α, the time of one ring step of a small
# message, is an assumption for the software over the link (MPI or NCCL), stated as such: the
# adapters' own latency (under 1 µs) is a floor that no allreduce step reaches.
LINKS = [
    Link("25 GbE (RoCE)", 5e-6, 8 / 25e9, "25 Gb/s line rate, as in Horovod's 512-GPU benchmark "
         "(docs/benchmarks.rst); α assumed 5 µs"),
    Link("100 GbE (RoCE)", 5e-6, 8 / 100e9, "100 Gb/s line rate; α assumed 5 µs"),
    Link("InfiniBand HDR", 3e-6, 8 / 200e9, "200 Gb/s, sub-600 ns adapter latency (NVIDIA "
         "ConnectX-6 user manual); α assumed 3 µs"),
    Link("InfiniBand NDR", 3e-6, 8 / 400e9, "400 Gb/s (NVIDIA ConnectX-7); α assumed 3 µs"),
    Link("NVLink 4 (H100)", 3e-6, 1 / 450e9, "900 GB/s both ways per GPU, 450 GB/s each way "
         "(NVIDIA H100); α assumed 3 µs"),
]


def ring(n: int, size: float, alpha: float, beta: float) -> float:
    """Seconds of a ring allreduce of `size` bytes over `n` ranks."""
    return alpha * 2 * (n - 1) + beta * 2 * (n - 1) / n * size if n > 1 else 0.0


def fit(points: list[tuple[int, int, float]]) -> tuple[float, float, float]:
    """(α, β, median relative error) of t(n, S) fitted to (n, S, seconds) points, each weighted
    by 1/t so that small and large messages count alike."""
    a = np.array([[2 * (n - 1), 2 * (n - 1) / n * s] for n, s, _ in points], dtype=float)
    t = np.array([p[2] for p in points])
    (alpha, beta), *_ = np.linalg.lstsq(a / t[:, None], np.ones_like(t), rcond=None)
    alpha, beta = max(float(alpha), 0.0), max(float(beta), 0.0)
    errors = [abs(ring(n, s, alpha, beta) - sec) / sec for n, s, sec in points]
    return alpha, beta, float(statistics.median(errors))


@dataclass(frozen=True)
class Family:
    name: str
    compute_s: float  # one step's compute at one rank, this machine (results/bench)
    grad_bytes: int
    batch: int


def families(bench: Path) -> list[Family]:
    """Each benchmark model's compute per step at one rank (the median over hvdl's engines,
    which run the same one-process code there) and gradient size (its parameters in float32),
    from a `python -m hvdl.bench` result."""
    from hvdl.bench.plain import SPECS, build

    found = json.loads(bench.read_text())["summary"]
    out = []
    for name, spec in SPECS.items():
        ms = [r["compute_ms"]["median"] for r in found if r["model"] == name
              and r["ranks"] == 1 and r["impl"].startswith("hvdl")]
        if ms:
            grad = sum(p.numel() for p in build(name).parameters()) * 4
            out.append(Family(name, statistics.median(ms) / 1000, grad, spec.batch))
    return out


def efficiency(f: Family, link: Link, n: int, *, batch_x: float = 1, every: int = 1,
               fp16: bool = False) -> float:
    """Projected weak-scaling efficiency of `f` at `n` ranks on `link`."""
    compute = f.compute_s * batch_x
    comm = ring(n, f.grad_bytes / (2 if fp16 else 1), link.alpha, link.beta) / every
    return compute / (compute + comm)


def last_gain(f: Family, link: Link, **how: Any) -> int | None:
    """The largest power-of-two rank count whose efficiency stays at or above FLOOR (None: not
    even 2 ranks; RANKS[-1] means it never falls below within 1024)."""
    good = [n for n in RANKS if efficiency(f, link, n, **how) >= FLOOR]
    return max(good) if good else None


# Horovod's published check: ResNet-101 (44.5 M parameters, float32) on 512 Pascal GPUs over
# 25 Gb/s RoCE, 90% efficiency (docs/benchmarks.rst); its example output gives 1656.82 images/s
# on 16 GPUs at batch 64, 103.6 images/s a GPU, so at most 0.618 s of compute a step.
HOROVOD = Family("ResNet-101 (Horovod's benchmark)", 64 / (1656.82 / 16), 44_549_160 * 4, 64)
GPU_STEP_S = 1e-3  # an assumed GPU step for these small models (no GPU figure measured yet)
