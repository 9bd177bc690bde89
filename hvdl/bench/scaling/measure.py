"""`measure`: time hvdl's allreduce on this job's ranks, message sizes 1 KiB to 64 MiB."""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from pathlib import Path

import numpy as np


def repeats(size: int) -> int:
    return 40 if size <= 2**20 else 12


def measure(args: argparse.Namespace) -> int:
    """Time allreduces on this job's ranks; rank 0 writes the JSON."""
    import torch

    from hvdl import dist

    ctx = dist.init(threads=args.threads, backend=args.backend)
    hosts = sorted(set(dist.allgather_object(socket.gethostname(), name="scaling.hosts")))
    rows = []
    for size in args.sizes:
        x = torch.ones(size // 4)
        for _ in range(3):  # warm-up: buffers, connections
            dist.allreduce_sum(x, name=f"scaling.{size}")
        mine = []
        for _ in range(args.repeats or repeats(size)):
            dist.barrier()
            started = time.perf_counter()
            dist.allreduce_sum(x, name=f"scaling.{size}")
            mine.append(time.perf_counter() - started)
        every = dist.allgather_object(mine, name="scaling.times")
        slowest = [max(ts) for ts in zip(*every)]
        q = np.percentile(slowest, [25, 50, 75])
        rows.append({"bytes": size, "median_s": float(q[1]), "p25_s": float(q[0]),
                     "p75_s": float(q[2]), "repeats": len(slowest)})
    if ctx.is_root:
        found = {"link": args.link, "engine": ctx.engine, "controller": ctx.controller,
                 "ranks": ctx.size, "hosts": hosts, "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                          time.gmtime()),
                 "machine": f"{socket.gethostname()}, {len(os.sched_getaffinity(0))}"
                            " cores", "rows": rows}
        Path(args.out).write_text(json.dumps(found, indent=1) + "\n")
        print(f"scaling: {args.link}, {ctx.size} ranks on {len(hosts)} host(s), {ctx.engine}: "
              f"{args.out}")
    dist.shutdown()
    return 0
