"""One benchmark measurement: a model family trained for a few hundred steps by one implementation.

    python -m hvdl.bench.worker --impl plain --model lenet5 --report out.json
    horovodrun -np 2 python -m hvdl.bench.worker --impl hvdl --model lenet5 --report out.json
    python -m torch.distributed.run --nproc_per_node 2 -m hvdl.bench.worker --impl ddp ...

hvdl/bench/suite.py launches these; each rank times its steps, rank 0 writes the job's report.
`plain` is hvdl/bench/plain.py's loop in one process, `ddp` the same networks under
DistributedDataParallel (Gloo on CPU, NCCL on GPU), `hvdl` the package's own models, optimizer
wrapper (hvdl/loop/sync.py) and training loop (`loop.train_epoch`, the RBM's `cd_epoch`).

Phases: `warmup` steps, then, with more than one rank, `steps` steps without synchronisation
(each rank on its own: the compute time under the same contention), then `steps` synchronised
steps, timed as a whole. Allreduce time is the blocked time measured around hvdl's collective,
and for DDP the synchronised minus the unsynchronised step time. `main_cpu_ms` is the training
thread's CPU time per step: unlike wall time, other processes on the machine barely change it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any

import torch

from hvdl.bench import plain as bench_plain
from hvdl.bench.measure import job_report, peak_memory_mb, timed
from hvdl.bench.plain import SPECS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hvdl.bench.worker")
    parser.add_argument("--impl", choices=("plain", "hvdl", "ddp"), required=True)
    parser.add_argument("--model", choices=tuple(SPECS), required=True)
    parser.add_argument("--steps", type=int, default=200, help="timed steps")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--perf", nargs="*", default=[], metavar="KEY=VALUE",
                        help="hvdl config.perf overrides, e.g. grad_sync=hooks")
    parser.add_argument("--engine", default="auto",
                        choices=("auto", "horovod", "mpi", "torch", "single"),
                        help="hvdl's collective engine (dist.backend)")
    parser.add_argument("--horovod-timeline", default="",
                        help="hvdl: write a Horovod timeline of the timed steps here")
    parser.add_argument("--report", required=True, help="JSON written by rank 0")
    return parser.parse_args(argv)


def batches(x: torch.Tensor, y: torch.Tensor | None, batch: int, steps: int, seed: int):
    """`steps` batches of a fresh permutation of the pool, as DeviceShard serves them."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).to(x.device)
    for i in range(steps):
        idx = order[i * batch:(i + 1) * batch]
        yield x[idx], None if y is None else y[idx]


# --- plain PyTorch and DDP ------------------------------------------------------------------

def torch_phases(args: argparse.Namespace, rank: int, size: int, device: torch.device,
                 ddp: bool) -> dict[str, Any]:
    """Warm-up, unsynchronised (DDP only) and timed phases of the plain loop (kept whole: the
    timed loop must read exactly as the plain loop it measures)."""
    import torch.distributed as tdist

    name, spec = args.model, SPECS[args.model]
    net = bench_plain.build(name).to(device)
    model = net
    if ddp and name != "rbm":
        model = torch.nn.parallel.DistributedDataParallel(net)
    opt = bench_plain.optimizer(name, net)
    x, y = bench_plain.synthetic_data(name, max(args.steps, args.warmup), rank, device)

    def reduce_sum(t: torch.Tensor) -> torch.Tensor:
        tdist.all_reduce(t)
        return t

    def flat_average() -> None:  # the RBM: no backward for DDP to hook, one flat all_reduce
        flat = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
        tdist.all_reduce(flat)
        flat /= size
        for p, part in zip(net.parameters(), flat.split([p.numel() for p in net.parameters()])):
            p.grad.copy_(part.view_as(p))

    def phase(steps: int, seed: int, synced: bool) -> None:
        total = torch.zeros((), device=device)
        local = model.no_sync() if model is not net and not synced else contextlib.nullcontext()
        with local:
            for xb, yb in batches(x, y, spec.batch, steps, seed):
                total += bench_plain.step(
                    name, model, net, opt, xb, yb,
                    reduce_sum=reduce_sum if (ddp and synced) else bench_plain.identity,
                    ranks=size if (ddp and synced) else 1,
                    sync_grads=flat_average if (ddp and synced) else None)
        float(total)  # the loss is read once per phase, as an epoch's mean would be

    phase(args.warmup, 1, synced=True)
    compute = timed(lambda: phase(args.steps, 2, synced=False), device)[0] if size > 1 else None
    step, cpu = timed(lambda: phase(args.steps, 3, synced=True), device)
    return {"step_s": step / args.steps, "cpu_s": cpu / args.steps,
            "compute_s": None if compute is None else compute / args.steps,
            "blocked_s": None, "peak_memory_mb": peak_memory_mb(device)}


def torch_main(args: argparse.Namespace) -> dict[str, Any] | None:
    """Plain (one process) or DDP (under torchrun); returns the report on rank 0."""
    torch.set_num_threads(args.threads)
    if args.impl == "plain":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return job_report(args, [torch_phases(args, 0, 1, device, ddp=False)], device)
    import torch.distributed as tdist

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else \
        torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, size = tdist.get_rank(), tdist.get_world_size()
    mine = torch_phases(args, rank, size, device, ddp=True)
    gathered: list[Any] = [None] * size
    tdist.all_gather_object(gathered, mine)
    tdist.barrier()  # nobody tears down Gloo's connections while a peer still reads them
    tdist.destroy_process_group()
    return job_report(args, gathered, device) if rank == 0 else None


# --- hvdl ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.impl == "hvdl":
        from hvdl.bench.hvdl_side import hvdl_main  # loads hvdl and Horovod

        report = hvdl_main(args)
    else:
        report = torch_main(args)
    if report is not None:
        with open(args.report, "w") as f:
            json.dump(report, f, indent=2)
    if args.impl == "ddp":
        # About one DDP job in eight aborted at interpreter exit, after its report ("terminate
        # called without an active exception": torch 2.13's Gloo threads met the C++ static
        # destructors). Nothing is left to do, so skip that teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
