"""Scaling on paper, from measurements: the allreduce cost of hvdl's engines, fitted, and each
family's weak-scaling efficiency projected from it to 1024 ranks on other links.

    mpirun -np 2 python -m hvdl.bench.scaling measure --link shm --out shm.json    # 2 ranks here
    python -m hvdl.bench.scaling report shm.json tcp-*.json --out results/scaling  # fit, project
    bash launch/scaling.sh                              # both, and 2-4 hosts of local-cluster.sh

`measure` (measure.py) times `dist.allreduce_sum` of float32 buffers from 1 KiB to 64 MiB (each
call after a barrier, the slowest rank's time, the median of the repeats) on whatever engine and
ranks the launcher gives it. `report` (report.py) fits, for each link, the ring allreduce cost

    t(n, S) = α·2(n−1) + β·2(n−1)/n·S          (n ranks, S bytes; Thakur et al. 2005)

by least squares on the relative error, then projects a family's weak-scaling efficiency
E(n) = c / (c + t(n, S)/K): c its compute time per step at a fixed per-rank batch, S its gradient
bytes, K the steps between synchronisations (1 for allreduce every step, K for `perf.sync
average` every K steps), with nothing overlapped (hvdl's fused allreduce follows the backward
pass). Measured: the allreduce times, c and S on this machine (results/bench). Projected:
everything at more ranks than were measured, and every other link (its α and β stated in
model.py's LINKS with their sources).
"""

from __future__ import annotations

import argparse

from hvdl.bench.scaling.model import SIZES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hvdl.bench.scaling",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="time allreduces on this job's ranks (under a launcher)")
    m.add_argument("--link", required=True, help="a name for the link measured, e.g. shm, tcp")
    m.add_argument("--out", required=True, help="the JSON file rank 0 writes")
    m.add_argument("--sizes", type=int, nargs="+", default=SIZES, help="message sizes, bytes")
    m.add_argument("--repeats", type=int, default=0, help="timed calls a size (0: 40, 12 > 1 MB)")
    m.add_argument("--threads", type=int, default=1, help="torch threads a rank")
    m.add_argument("--backend", default="auto", help="dist.backend (auto: the launcher's)")
    r = sub.add_parser("report", help="fit the measurements and project the families")
    r.add_argument("measured", nargs="+", help="measurement files")
    r.add_argument("--bench", default="results/bench/engines/bench.json",
                   help="a `python -m hvdl.bench` result: compute per step of each family")
    r.add_argument("--out", required=True, help="the folder for scaling.md, .json and .png")
    args = parser.parse_args(argv)
    if args.command == "measure":
        from hvdl.bench.scaling.measure import measure

        return measure(args)
    from hvdl.bench.scaling.report import report

    return report(args)
