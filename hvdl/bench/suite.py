"""Benchmark hvdl against a plain PyTorch loop and DistributedDataParallel, over world sizes.

    python -m hvdl.bench                                   # all families, 1 and 2 ranks, 3 repeats
    hvdl bench --models lenet5 --ranks 1 2 --repeats 5 --threads 1 --out results/bench
    hvdl bench --models lenet5 --ranks 2 --variants hvdl hvdl-hooks hvdl-fp16 --out /tmp/knobs
    python -m hvdl.bench --tiny --out /tmp/bench          # seconds: what the test suite runs
    python -m hvdl.bench --render results/bench            # redraw bench.md/.png from bench.json

For each model family (LeNet-5, sparse autoencoder, RBM, DBN fine-tuning) it runs, on the same
network, batch and synthetic data: `plain`, a single-process PyTorch loop with no hvdl code;
`hvdl` at every requested world size (1 rank: the framework's overhead; N ranks under
horovodrun); `ddp`, DistributedDataParallel with Gloo (NCCL on GPU) under torchrun; and any
extra hvdl variants (hvdl/bench/launch.py `VARIANTS`: Horovod's per-tensor optimizer, fp16
compression, no tensor fusion, other cycle times, parameter averaging, ranks bound to
cores). Repeats are interleaved so that a noisy machine spreads its noise over all variants;
`--quiet-wait` and `--max-interference` wait for, and rerun after, other processes' load. Each
job is a subprocess running hvdl/bench/worker.py; the figures are medians over repeats with
their min and max. Writes `bench.json` (every run, the machine, versions and date), `bench.md` (the
table) and `bench.png` (throughput and scaling efficiency against ranks) into `--out`.
Measured figures: results/bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from hvdl.bench.launch import VARIANTS, run_one
from hvdl.bench.plain import SPECS
from hvdl.errors import ArgumentParser

IMPLS = ("plain", "ddp", *VARIANTS)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="hvdl bench", description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=tuple(SPECS), default=list(SPECS),
                        metavar="MODEL", help=f"families to measure: {', '.join(SPECS)}")
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 2], metavar="N",
                        help="rank counts to run each variant at")
    parser.add_argument("--variants", nargs="+", choices=IMPLS, default=["plain", "hvdl", "ddp"],
                        metavar="VARIANT", help=f"implementations to time: {', '.join(IMPLS)}")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each (model, variant, ranks), interleaved")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps first")
    parser.add_argument("--threads", default="auto",
                        help="torch threads per rank: N, or auto (cores / ranks)")
    parser.add_argument("--controller", choices=("mpi", "gloo"), default="mpi",
                        help="horovodrun's controller for hvdl with N > 1 ranks")
    parser.add_argument("--timeline", action="store_true",
                        help="write a Horovod timeline of each N-rank hvdl run into --out")
    parser.add_argument("--quiet-wait", type=float, default=0.0, metavar="SECONDS",
                        help="before each job wait up to this long for the CPUs to be idle")
    parser.add_argument("--max-interference", type=float, default=1.0, metavar="FRACTION",
                        help="rerun a job if other processes used more of the machine")
    parser.add_argument("--retries", type=int, default=2, help="reruns of a disturbed job")
    parser.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                        help="glibc allocator of every job: hvdl's setting, or glibc's own")
    parser.add_argument("--out", default="results/bench",
                        help="folder for bench.json, bench.md and bench.png")
    parser.add_argument("--tiny", action="store_true",
                        help="a few steps and one repeat: checks the machinery in seconds")
    parser.add_argument("--render", metavar="FOLDER",
                        help="run nothing: rewrite FOLDER's bench.md and bench.png from its "
                        "bench.json")
    args = parser.parse_args(argv)
    if args.tiny:
        args.steps, args.warmup, args.repeats = 5, 2, 1
    return args


def plan(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """(model, impl, ranks) of one repeat; plain and hvdl-single run at one rank only."""
    jobs = []
    for model in args.models:
        for impl in args.variants:
            for ranks in ([1] if impl in ("plain", "hvdl-single") else args.ranks):
                jobs.append((model, impl, ranks))
    return jobs


def main(argv: list[str] | None = None) -> int:
    from hvdl.bench import report as bench_report

    args = parse_args(argv)
    if args.render:
        source = Path(args.render) / "bench.json"
        try:
            result = json.loads(source.read_text())
        except (OSError, ValueError) as err:
            print(f"hvdl bench: error: cannot read {source} ({err}); --render takes a folder "
                  "written by hvdl bench", file=sys.stderr)
            return 2
        bench_report.write(result, Path(args.render))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    conditions = {"load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="hvdl-bench-") as tmp:
        for repeat in range(args.repeats):
            for model, impl, ranks in plan(args):
                entry = run_one(args, model, impl, ranks, repeat, Path(tmp))
                runs.append(entry)
                print(bench_report.progress_line(entry), flush=True)
    conditions["load_after"] = os.getloadavg()
    result = bench_report.assemble(vars(args), runs, conditions, argv, out)
    bench_report.write(result, out)
    print(f"wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'}")
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
