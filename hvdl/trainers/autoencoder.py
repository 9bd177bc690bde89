"""Train a sparse autoencoder ("sae") or a stacked autoencoder classifier ("stacked_ae").

    python -m hvdl.train --model sae_patches                       # 64-25 on natural patches
    horovodrun -np 2 python -m hvdl.train --model sae_mnist        # 784-196 on MNIST
    horovodrun -np 2 python -m hvdl.train --model stacked_ae_mnist # 784-200-200-10

With `optimizer = "lbfgs"` every rank evaluates J and ∇J on its shard, the sums are reduced over
ranks, and every rank takes the same full-batch L-BFGS step (hvdl/loop/lbfgs.py); at the end a
checksum of the parameters gathered from every rank confirms they are identical, and the check is
recorded in metrics.json. With "sgd" or "adam" the minibatches go through the engine
(hvdl/loop/epochs.py), which averages gradients over ranks by allreduce, with ρ̂ taken over the
global minibatch. A stack is pretrained greedily, layer by layer on the previous layer's hidden
activations, then a softmax classifier is trained on the top features, and the whole stack is
fine-tuned (`sae.finetune_optimizer`).

Reference: the UFLDL exercises (see hvdl/models/autoencoder.py). Results on this project's
machine: results/autoencoders/README.md.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hvdl import checkpoint, dist, loop, metrics
from hvdl.config import Config, ConfigError
from hvdl.data import dataset
from hvdl.data.shard import DeviceShard, Shards
from hvdl.dist import Context
from hvdl.loop import lbfgs, sync
from hvdl.models import autoencoder as ae
from hvdl.runlog import RunLog
from hvdl.viz import display_scale, filter_grid

FINETUNE_OPTIMIZERS = ("lbfgs", "sgd", "adam")


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
    data = dataset.load(config, ctx, run, labels=labels, held=True)
    config = dataset.fit_layers(config, data)
    return data, data.shards().derived(lambda s: s.to(dtype(config))), config


def train_sae(config: Config, ctx: Context, run: RunLog,
              state: dict[str, Any] | None) -> dict[str, Any]:
    """One sparse autoencoder layers[0] → layers[1], on patches, MNIST or the user's data."""
    data, shards, config = sparse_data(config, ctx, run)
    model = ae.SparseAutoencoder(n_visible=config.layers[0], n_hidden=config.layers[1],
                                 seed=config.seed, dtype=dtype(config)).to(ctx.device)
    report = train_sparse(model, shards, config, ctx, run, "sae", data.picture, state)
    checkpoint.save_stage(run, "sae", model, config)
    report["mean_predictor_reconstruction"] = ae.mean_predictor_error(
        shards.train.tensors()[0], make_reduce(ctx, "sae.mean"))
    run.print(f"sae: reconstruction {report['reconstruction']:.4f}, always predicting the mean "
              f"example gives {report['mean_predictor_reconstruction']:.4f}")
    return report  # metrics.json's "final"


# --- the stacked autoencoder classifier ---------------------------------------------------------

def classifier_objective(net: nn.Module, x: torch.Tensor, y: torch.Tensor, params: list,
                         decayed: list, lam: float, reduce: ae.Reduce) -> lbfgs.Objective:
    """Full-batch J = mean cross-entropy + (λ/2)Σ‖W‖² over all ranks, for L-BFGS."""
    def objective() -> torch.Tensor:
        share, cost = ae.classifier_share(net(x), y, decayed, lam=lam, reduce_sum=reduce)
        lbfgs.set_grads(params, ae.reduce_gradient(share, params, reduce))
        return cost
    return objective


def train_classifier(net: nn.Module, shard: DeviceShard, config: Config, ctx: Context,
                     run: RunLog, *, name: str, optimizer: str, iterations: int,
                     evaluate: Callable[[], dict] | None = None,
                     state: dict[str, Any] | None = None, carry: Carry = None) -> dict:
    """Train `net` on the shard's (x, y) by full-batch L-BFGS or by minibatches through the
    loop; only the softmax weights (the last layer) are decayed, with `sae.softmax_lam`, as in
    UFLDL."""
    lam, softmax = config.sae.softmax_lam, net[-1] if isinstance(net, nn.Sequential) else net
    started = time.perf_counter()
    if optimizer == "lbfgs":
        x, y = shard.tensors()
        objective = classifier_objective(net, x, y, list(net.parameters()), [softmax.weight],
                                         lam, make_reduce(ctx, f"{name}.sums"))
        report = loop.fit_full_batch(
            name, net, objective, iterations=iterations, config=config, ctx=ctx, run=run,
            state=state, history=config.sae.lbfgs_history, chunk=config.log_every, carry=carry,
            on_chunk=lambda done, cost: run.print(f"{name} L-BFGS iteration {done}: cost "
                                                  f"{cost:.6f}"))
    else:
        def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits, y, label_smoothing=config.label_smoothing) \
                + 0.5 * lam * (softmax.weight ** 2).sum()
        stage = loop.Stage(name=name, model=net, loss=loss, epochs=iterations, lr=config.lr,
                           evaluate=evaluate, carry=carry)
        final = loop.fit(stage, shard.rebatched(config.batch_size),
                         dataclasses.replace(config, optimizer=optimizer), ctx, run,
                         state=state)
        report = {k: v for k, v in final.items() if k != "test"}  # final is in the history
    return {**report, "seconds": time.perf_counter() - started,
            "parameters": sync.agreement(net, f"{name}.agree")}


def finished(run: RunLog, name: str, model: nn.Module, report: dict,
             done: dict[str, Any]) -> None:
    """Keep a finished stage's report, and its weights for the checkpoints after it."""
    run.record(stages={**run.metrics.get("stages", {}), name: report})
    done[name] = model.state_dict()


def pretrain(shards: Shards, config: Config, ctx: Context, run: RunLog,
             shape: tuple[int, int] | None, state: dict[str, Any] | None,
             done: dict[str, Any]) -> tuple[list[nn.Linear], Shards]:
    """Greedy layer-wise pretraining: each sparse autoencoder on the previous one's a2; a layer
    `state` was written after comes from the weights it carries."""
    encoders = []
    for i, n_hidden in enumerate(config.layers[1:-1]):
        name = f"layer{i + 1}"
        model = ae.SparseAutoencoder(n_visible=shards.train.shape[0], n_hidden=n_hidden,
                                     seed=config.seed + i, dtype=dtype(config)).to(ctx.device)
        before = dict(done)
        report = loop.once(
            name, model, state, run, config,
            lambda: train_sparse(model, shards, config, ctx, run, name, shape if i == 0 else None,
                                 state, carry=lambda: before),
            kept=lambda: run.metrics.get("stages", {}).get(name, {}))
        finished(run, name, model, report, done)
        shards = shards.mapped(model.encode)  # (n, n_hidden): the next layer's input
        encoders.append(model.encoder)
    return encoders, shards


def check_stacked(config: Config) -> None:
    if len(config.layers) < 2:
        raise ConfigError("family 'stacked_ae' needs layers [inputs, hidden..., classes], got "
                          f"{list(config.layers)}")
    if config.sae.finetune_optimizer not in FINETUNE_OPTIMIZERS:
        raise ConfigError(f"config key 'sae.finetune_optimizer' is "
                          f"{config.sae.finetune_optimizer!r}; allowed: lbfgs, sgd, adam")


def train_stacked(config: Config, ctx: Context, run: RunLog,
                  state: dict[str, Any] | None) -> dict[str, Any]:
    """Pretrain, train the softmax on the top features, fine-tune the stack; test before/after.
    Without hidden layers (layers [inputs, classes]) this is softmax regression alone."""
    check_stacked(config)
    started = time.perf_counter()
    data, shards, config = sparse_data(config, ctx, run, labels=True)
    train, test, shape, done = shards.train, shards.test, data.picture, {}
    encoders, features = pretrain(shards, config, ctx, run, shape, state, done)
    softmax = ae.softmax_layer(features.train.shape[0], config.layers[-1], seed=config.seed,
                               dtype=dtype(config)).to(ctx.device)
    before = dict(done)
    report = loop.once(
        "softmax", softmax, state, run, config,
        lambda: train_classifier(
            softmax, features.train, config, ctx, run, name="softmax", optimizer=config.optimizer,
            iterations=config.sae.lbfgs_iterations if config.optimizer == "lbfgs"
            else config.epochs, state=state, carry=lambda: before),
        kept=lambda: run.metrics.get("stages", {}).get("softmax", {}))
    finished(run, "softmax", softmax, report, done)
    net = ae.stack(encoders, softmax)

    def evaluate(tag: str) -> dict[str, Any]:
        if test is None:
            return {}
        return metrics.evaluate_classifier(net, test.scan(), data.classes, name=tag)

    before, finetune = evaluate("test.before"), {"parameters": report.get("parameters", {})}
    if before:
        run.print(f"before fine-tuning: test accuracy {100 * before['accuracy']:.2f}%")
    if encoders:  # a softmax alone has nothing below it to fine-tune
        finetune = train_classifier(
            net, train, config, ctx, run, name="finetune",
            optimizer=config.sae.finetune_optimizer, iterations=config.sae.finetune_iterations,
            evaluate=(lambda: evaluate("test.epoch")) if test is not None else None,
            state=state, carry=lambda: dict(done))
        checkpoint.save_stage(run, "finetune", net, config)
        finished(run, "finetune", net, finetune, {})
    after = evaluate("test.after")
    draw_filters(run, "finetune/filters", net[0].weight, shape, 0)
    if after:
        run.print(f"after fine-tuning: test accuracy {100 * after['accuracy']:.2f}% "
                  f"(before {100 * before['accuracy']:.2f}%)")
    run.record(test_before_finetune=before, test_after_finetune=after)
    return {"accuracy_before_finetune": before.get("accuracy"), "accuracy": after.get("accuracy"),
            "macro_f1": after.get("macro_f1"), "error": after.get("error"),
            "parameters_identical": finetune.get("parameters", {}).get("identical"),
            "seconds": time.perf_counter() - started}


def train(config: Config, ctx: Context, run: RunLog,
          state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train family "sae" or "stacked_ae" as `config` says; `state` resumes in its stage."""
    if config.family == "sae":
        return train_sae(config, ctx, run, state)
    if config.family == "stacked_ae":
        return train_stacked(config, ctx, run, state)
    raise ConfigError(f"config key 'family' is {config.family!r}; this trainer allows sae, "
                      "stacked_ae")
