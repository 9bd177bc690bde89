"""The benchmark's hvdl side: the package's own models, optimizer wrapper and training loops.

Called by hvdl/bench/worker.py for `--impl hvdl`, under horovodrun (N ranks) or as one plain
process (the framework's overhead over hvdl/bench/plain.py's loop). Every model, the RBM's CD-k
stage included, runs through `loop.train_epoch` with the optimizer `sync.wrap` returns.
"""

from __future__ import annotations

import argparse
import os
from functools import partial
from typing import Any, Callable

import torch
import torch.nn.functional as F

from hvdl import config as configlib
from hvdl import dist, loop
from hvdl.bench import plain as bench_plain
from hvdl.bench.measure import job_report, peak_memory_mb, timed
from hvdl.bench.plain import SPECS
from hvdl.config import Config
from hvdl.data.shard import DeviceShard
from hvdl.dist import Context
from hvdl.loop import sync
from hvdl.loop.schedule import Schedule, make_optimizer
from hvdl.runlog import RunLog

Epoch = Callable[[torch.optim.Optimizer, DeviceShard, int], None]  # (optimizer, shard, epoch)


def bench_config(args: argparse.Namespace) -> Config:
    """The recipe-like config of a benchmark run: SGD with momentum 0.9, constant rate."""
    spec = SPECS[args.model]
    family = {"lenet5": "cnn"}.get(args.model, args.model)
    values: dict[str, Any] = {
        "family": family, "layers": ",".join(map(str, spec.layers)), "optimizer": "sgd",
        "batch_size": spec.batch, "lr": spec.lr, "momentum": 0.9, "lr_scaling": "none",
        "threads": args.threads, "log_every": 50, "seed": 0,
        "sae.rho": bench_plain.SAE["rho"], "sae.beta": bench_plain.SAE["beta"],
        "sae.lam": bench_plain.SAE["lam"], "rbm.weight_cost": bench_plain.RBM_WEIGHT_COST,
        "rbm.initial_momentum": 0.9, "rbm.pretrain_lr": spec.lr, "dist.backend": args.engine}
    for item in args.perf:
        key, _, value = item.partition("=")
        values[f"perf.{key}"] = value
    return configlib.build(values)


def build(config: Config, ctx: Context) -> tuple[torch.nn.Module, Epoch, Callable]:
    """(model, one epoch of hvdl's loop, a function making the synchronised optimizer)."""
    from hvdl.models import autoencoder as ae
    from hvdl.models import rbm as rbm_models
    from hvdl.models.cnn import LeNet5
    from hvdl.trainers import rbm as rbm_trainer
    from hvdl.trainers import sparse as ae_trainer

    run = RunLog(config, is_root=False)  # silent: no folder, no TensorBoard
    lr = config.lr
    schedule = Schedule(lr, ctx.size, 10**9, 0, "constant", config.lr_scaling)
    gen = torch.Generator().manual_seed(config.seed)
    if config.family == "rbm":
        rbm = rbm_models.make_stack(config.layers, generator=gen)[0].to(ctx.device)
        stage = rbm_trainer.rbm_stage([rbm], None, "bench", config, ctx, run, None)

        def make_rbm_optimizer() -> torch.optim.Optimizer:
            return sync.wrap(stage.optimizer(), rbm, config)
        return rbm, partial(epoch_of, stage, schedule, run, config), make_rbm_optimizer
    if config.family == "cnn":
        torch.manual_seed(config.seed)
        model, loss = LeNet5().to(ctx.device), F.cross_entropy
    elif config.family == "sae":
        model = ae.SparseAutoencoder(n_visible=config.layers[0], n_hidden=config.layers[1],
                                     seed=config.seed).to(ctx.device)
        loss = ae.SparseLoss(model, rho=config.sae.rho, beta=config.sae.beta,
                             lam=config.sae.lam,
                             reduce_sum=ae_trainer.make_reduce(ctx, "bench.sums"))
    else:
        stack = rbm_models.make_stack(config.layers[:-1], generator=gen)
        model = rbm_models.classifier(stack, config.layers[-1], generator=gen).to(ctx.device)
        loss = F.cross_entropy
    stage = loop.Stage(name="bench", model=model, loss=loss, epochs=1, lr=lr)

    def make_model_optimizer() -> torch.optim.Optimizer:
        return sync.wrap(make_optimizer(model.parameters(), config, lr), model, config)
    return model, partial(epoch_of, stage, schedule, run, config), make_model_optimizer


def epoch_of(stage: loop.Stage, schedule: Schedule, run: RunLog, config: Config,
             optimizer: torch.optim.Optimizer, shard: DeviceShard, epoch: int) -> None:
    """One epoch of the stage through hvdl's training loop."""
    loop.train_epoch(stage, optimizer, shard, schedule, epoch=epoch, step=0, run=run,
                     config=config)


def hvdl_main(args: argparse.Namespace) -> dict[str, Any] | None:
    """Warm-up, unsynchronised and timed phases through hvdl; the report on rank 0."""
    config = bench_config(args)
    if args.horovod_timeline:
        os.environ["HOROVOD_TIMELINE"] = "DYNAMIC"
    ctx = dist.init(threads=args.threads, backend=config.dist.backend, perf=config.perf)
    batch = SPECS[args.model].batch
    x, y = bench_plain.synthetic_data(args.model, max(args.steps, args.warmup), ctx.rank,
                                      ctx.device)

    def shard(steps: int) -> DeviceShard:
        return DeviceShard(x, y, batch_size=batch, steps=steps, seed=ctx.rank)

    model, epoch, make_optimizer = build(config, ctx)
    dist.broadcast_state(model)
    compute = None
    if ctx.size > 1:  # each rank alone first: the same steps with a local optimizer
        local = bench_plain.optimizer(args.model, model)
        compute = timed(lambda: epoch(local, shard(args.steps), 2), ctx.device)[0]
        dist.broadcast_state(model)
    optimizer = make_optimizer()
    epoch(optimizer, shard(args.warmup), 1)
    before = sync.blocked_seconds(optimizer)
    if args.horovod_timeline:
        dist.start_timeline(args.horovod_timeline)
    step, cpu = timed(lambda: epoch(optimizer, shard(args.steps), 3), ctx.device)
    if args.horovod_timeline:
        dist.stop_timeline()
    blocked = sync.blocked_seconds(optimizer)
    mine = {"step_s": step / args.steps, "cpu_s": cpu / args.steps,
            "compute_s": None if compute is None else compute / args.steps,
            "blocked_s": None if blocked is None or ctx.size == 1 else
            (blocked - before) / args.steps, "peak_memory_mb": peak_memory_mb(ctx.device)}
    ranks = dist.allgather_object(mine, name="bench.report") if ctx.size > 1 else [mine]
    dist.shutdown()
    if not ctx.is_root:
        return None
    return job_report(args, ranks, ctx.device, controller=ctx.controller, engine=ctx.engine,
                      perf=configlib.to_dict(config)["perf"])
