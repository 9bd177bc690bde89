"""Train one sparse autoencoder (family "sae"), and each layer of a stacked one.

    python -m hvdl.train --model sae_patches                       # 64-25 on natural patches
    horovodrun -np 2 python -m hvdl.train --model sae_mnist        # 784-196 on MNIST

With `optimizer = "lbfgs"` every rank evaluates J and ∇J on its shard, the sums are reduced over
ranks, and every rank takes the same full-batch L-BFGS step (hvdl/loop/lbfgs.py); at the end a
checksum of the parameters gathered from every rank confirms they are identical, and the check is
recorded in metrics.json. With "sgd" or "adam" the minibatches go through the loop
(hvdl/loop/), which averages gradients over ranks by allreduce, with ρ̂ taken over the global
minibatch.

Reference: the UFLDL exercises (see hvdl/models/autoencoder.py). Results on this project's
machine: results/autoencoders/README.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from hvdl import checkpoint, dist, loop
from hvdl.config import Config
from hvdl.config_rules import fit_data
from hvdl.data import dataset
from hvdl.data.record import startup_line
from hvdl.data.settings import Settings
from hvdl.data.shard import Shards
from hvdl.dist import Context
from hvdl.loop import lbfgs, sync
from hvdl.models import autoencoder as ae
from hvdl.runlog import RunLog
from hvdl.viz import display_scale, filter_grid


def dtype(config: Config) -> torch.dtype:
    return torch.float64 if config.sae.float64 else torch.float32


def make_reduce(ctx: Context, name: str) -> ae.Reduce:
    """Sum over ranks by allreduce (the identity in a one-rank job)."""
    if ctx.size == 1:
        return ae.identity
    return lambda t: dist.allreduce_sum(t, name=name)  # on the device: no wait for the host


def draw_filters(run: RunLog, tag: str, W: torch.Tensor, shape: tuple[int, int] | None,
                 step: int) -> None:
    """The filters (rows of W) as a PNG in the run folder and in TensorBoard (rank 0 only)."""
    if shape is None or not run.is_root:  # only first-layer filters are pictures
        return
    width = filter_grid(W, shape).shape[1]
    run.image(tag, filter_grid(W, shape, scale=display_scale(width)), step)


# --- one sparse autoencoder ---------------------------------------------------------------------

Carry = Callable[[], dict[str, Any]] | None  # the finished stages' weights, for checkpoints


def lbfgs_sparse(model: ae.SparseAutoencoder, x: torch.Tensor, config: Config, ctx: Context,
                 run: RunLog, name: str, shape: tuple[int, int] | None,
                 state: dict[str, Any] | None, carry: Carry) -> dict[str, Any]:
    """Full-batch L-BFGS on J over all ranks' examples; every rank takes the same steps."""
    params, sae, reduce = list(model.parameters()), config.sae, make_reduce(ctx, f"{name}.sums")
    latest: dict[str, ae.SparseTerms] = {}

    def objective() -> torch.Tensor:
        latest["terms"], grads = ae.sparse_cost_grad(model, x, rho=sae.rho, beta=sae.beta,
                                                     lam=sae.lam, reduce_sum=reduce)
        lbfgs.set_grads(params, grads)
        return latest["terms"].cost

    def on_chunk(done: int, cost: float) -> None:
        run.scalars(latest["terms"].floats(), done, prefix=f"{name}/")
        run.print(f"{name} L-BFGS iteration {done}: cost {cost:.6f}")
        if config.filters_every and done % config.filters_every == 0:
            draw_filters(run, f"{name}/filters", model.encoder.weight, shape, done)

    every = config.filters_every or config.log_every
    return loop.fit_full_batch(name, model, objective, iterations=sae.lbfgs_iterations,
                               config=config, ctx=ctx, run=run, state=state,
                               history=sae.lbfgs_history, chunk=min(config.log_every, every),
                               on_chunk=on_chunk, carry=carry)


def minibatch_sparse(model: ae.SparseAutoencoder, shards: Shards, config: Config,
                     ctx: Context, run: RunLog, name: str, shape: tuple[int, int] | None,
                     state: dict[str, Any] | None, carry: Carry) -> dict[str, Any]:
    """SGD or Adam through the loop's synchronised optimizer, ρ̂ over the global minibatch."""
    loss = ae.SparseLoss(model, rho=config.sae.rho, beta=config.sae.beta, lam=config.sae.lam,
                         reduce_sum=make_reduce(ctx, f"{name}.sums"))

    def after_step(step: int) -> None:
        if step % config.log_every == 0:  # the global terms; "cost" is logged by the loop
            terms = loss.terms.floats()
            run.scalars({k: v for k, v in terms.items() if k != "cost"}, step, prefix=f"{name}/")
        if config.filters_every and step % config.filters_every == 0:
            draw_filters(run, f"{name}/filters", model.encoder.weight, shape, step)

    stage = loop.Stage(name=name, model=model, loss=loss, epochs=config.epochs, lr=config.lr,
                       after_step=after_step, carry=carry)
    final = loop.fit(stage, shards, config, ctx, run, state=state)
    return {"epochs": final.get("epoch", 0), "steps": final.get("step", 0)}


def train_sparse(model: ae.SparseAutoencoder, shards: Shards, config: Config,
                 ctx: Context, run: RunLog, name: str, shape: tuple[int, int] | None,
                 state: dict[str, Any] | None = None, carry: Carry = None) -> dict[str, Any]:
    """Train one sparse autoencoder on this rank's shard (n, n_visible) of the examples."""
    started = time.perf_counter()
    if config.optimizer == "lbfgs":
        report = lbfgs_sparse(model, shards.train.tensors()[0], config, ctx, run, name, shape,
                              state, carry)
    else:
        batches = shards.derived(lambda s: s.rebatched(config.batch_size, labels=False))
        report = minibatch_sparse(model, batches, config, ctx, run, name, shape, state, carry)
    seconds = time.perf_counter() - started
    x, _ = shards.train.tensors()  # the shard now: elastic training may have dealt it again
    with torch.no_grad():
        x_hat, a2 = model(x)  # (n, n_visible), (n, n_hidden)
        _, terms = ae.sparse_share(x, x_hat, a2, model.weights(), rho=config.sae.rho,
                                   beta=config.sae.beta, lam=config.sae.lam,
                                   reduce_sum=make_reduce(ctx, f"{name}.final"))
    draw_filters(run, f"{name}/filters", model.encoder.weight, shape,
                 report.get("iterations", report.get("epochs", 0)))
    report = {**report, **terms.floats(), "seconds": seconds,
              "parameters": sync.agreement(model, f"{name}.agree")}
    run.print(f"{name}: cost {report['cost']:.6f} = reconstruction "
              f"{report['reconstruction']:.6f} + weight decay {report['weight_decay']:.6f} + "
              f"sparsity {report['sparsity']:.6f}; {seconds:.1f} s; parameters identical on "
              f"{report['parameters']['ranks']} rank(s): {report['parameters']['identical']}")
    return report


def sparse_data(config: Config, ctx: Context, run: RunLog,
                labels: bool = False) -> tuple[dataset.Data, Shards, Config]:
    """The data, held in memory (J is taken over the whole shard), its shards in the weights'
    type, and the config with its layers fitted to it."""
    data = dataset.load(Settings.of(config), ctx, labels=labels, held=True)
    run.record_data(data.info, startup_line(data.info, ctx))
    config, chosen = fit_data(config, data)
    if chosen:
        run.print(f"hvdl: {chosen}")
    return data, data.shards().derived(lambda s: s.to(dtype(config))), config


def build_sae(config: Config, data: dict[str, Any] | None = None) -> ae.SparseAutoencoder:
    """The sae family's model, layers[0] → layers[1], as training starts it and as a checkpoint
    is loaded into (hvdl/families.py)."""
    return ae.SparseAutoencoder(n_visible=config.layers[0], n_hidden=config.layers[1],
                                seed=config.seed, dtype=dtype(config))


def train_sae(config: Config, ctx: Context, run: RunLog,
              state: dict[str, Any] | None = None) -> dict[str, Any]:
    """One sparse autoencoder layers[0] → layers[1], on patches, MNIST or the user's data."""
    data, shards, config = sparse_data(config, ctx, run)
    model = build_sae(config).to(ctx.device)
    report = train_sparse(model, shards, config, ctx, run, "sae", data.picture, state)
    checkpoint.save_stage(run, "sae", model, config)
    report["mean_predictor_reconstruction"] = ae.mean_predictor_error(
        shards.train.tensors()[0], make_reduce(ctx, "sae.mean"))
    run.print(f"sae: reconstruction {report['reconstruction']:.4f}, always predicting the mean "
              f"example gives {report['mean_predictor_reconstruction']:.4f}")
    return report  # metrics.json's "final"
