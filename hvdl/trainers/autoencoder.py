"""Train a sparse autoencoder ("sae") or a stacked autoencoder classifier ("stacked_ae").

    python -m hvdl.train --model sae_patches                       # 64-25 on natural patches
    horovodrun -np 2 python -m hvdl.train --model sae_mnist        # 784-196 on MNIST
    horovodrun -np 2 python -m hvdl.train --model stacked_ae_mnist # 784-200-200-10

With `optimizer = "lbfgs"` every rank evaluates J and ∇J on its shard, the sums are reduced over
ranks, and every rank takes the same full-batch L-BFGS step (hvdl/lbfgs.py); at the end a
checksum of the parameters gathered from every rank confirms they are identical, and the check is
recorded in metrics.json. With "sgd" or "adam" the minibatches go through the engine
(hvdl/engine.py), which averages gradients over ranks by allreduce, with ρ̂ taken over the
global minibatch. A stack is pretrained greedily, layer by layer on the previous layer's hidden
activations, then a softmax classifier is trained on the top features, and the whole stack is
fine-tuned (`sae.finetune_optimizer`).

Reference: the UFLDL exercises (see hvdl/models/autoencoder.py). Results on this project's
machine: results/autoencoders/README.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hvdl import dist, engine, lbfgs, metrics
from hvdl.config import Config, ConfigError
from hvdl.data import dataset
from hvdl.data.shard import DeviceShard
from hvdl.dist import Context
from hvdl.models import autoencoder as ae
from hvdl.runlog import RunLog
from hvdl.viz import display_scale, filter_grid

FINETUNE_OPTIMIZERS = ("lbfgs", "sgd", "adam")
RESUMES = False  # train() takes no checkpoint: `--resume auto` (a Slurm requeue) starts afresh


def dtype(config: Config) -> torch.dtype:
    return torch.float64 if config.sae.float64 else torch.float32


def make_reduce(ctx: Context, name: str) -> ae.Reduce:
    """Sum over ranks by allreduce (the identity in a one-rank job)."""
    if ctx.size == 1:
        return ae.identity
    return lambda t: dist.allreduce_sum(t.cpu(), name=name).to(t.device)


def draw_filters(run: RunLog, tag: str, W: torch.Tensor, shape: tuple[int, int] | None,
                 step: int) -> None:
    """The filters (rows of W) as a PNG in the run folder and in TensorBoard (rank 0 only)."""
    if shape is None or not run.is_root:  # only first-layer filters are pictures
        return
    width = filter_grid(W, shape).shape[1]
    run.image(tag, filter_grid(W, shape, scale=display_scale(width)), step)


def parameters_agree(model: nn.Module, ctx: Context, name: str) -> dict[str, Any]:
    """Whether every rank holds bitwise the same parameters (a collective)."""
    flat = torch.cat([p.detach().reshape(-1).double().cpu() for p in model.parameters()])
    digest = hashlib.sha256(flat.numpy().tobytes()).hexdigest()[:16]
    digests = [digest] if ctx.size == 1 else dist.allgather_object(digest, name=name)
    return {"identical": len(set(digests)) == 1, "sha256": digests, "ranks": len(digests)}


# --- one sparse autoencoder ---------------------------------------------------------------------

def lbfgs_sparse(model: ae.SparseAutoencoder, x: torch.Tensor, config: Config, ctx: Context,
                 run: RunLog, name: str, shape: tuple[int, int] | None) -> dict[str, Any]:
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
    return lbfgs.minimize(params, objective, iterations=sae.lbfgs_iterations,
                          history=sae.lbfgs_history, chunk=min(config.log_every, every),
                          on_chunk=on_chunk)


def minibatch_sparse(model: ae.SparseAutoencoder, shard: DeviceShard, config: Config,
                     ctx: Context, run: RunLog, name: str,
                     shape: tuple[int, int] | None) -> dict[str, Any]:
    """SGD or Adam through Horovod's distributed optimizer, ρ̂ over the global minibatch."""
    loss = ae.SparseLoss(model, rho=config.sae.rho, beta=config.sae.beta, lam=config.sae.lam,
                         reduce_sum=make_reduce(ctx, f"{name}.sums"))
    steps = itertools.count(1)

    def logged_loss(output: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        value, step = loss(output, x), next(steps)
        if step % config.log_every == 0:  # the global terms; "cost" is logged by the engine
            terms = loss.terms.floats()
            run.scalars({k: v for k, v in terms.items() if k != "cost"}, step, prefix=f"{name}/")
        if config.filters_every and step % config.filters_every == 0:
            draw_filters(run, f"{name}/filters", model.encoder.weight, shape, step)
        return value

    stage = engine.Stage(name=name, model=model, loss=logged_loss, epochs=config.epochs,
                         lr=config.lr)
    final = engine.fit(stage, shard, config, ctx, run)
    return {"epochs": final.get("epoch", 0), "steps": next(steps) - 1}


def train_sparse(model: ae.SparseAutoencoder, shard: DeviceShard, config: Config,
                 ctx: Context, run: RunLog, name: str,
                 shape: tuple[int, int] | None) -> dict[str, Any]:
    """Train one sparse autoencoder on this rank's shard (n, n_visible) of the examples."""
    started = time.perf_counter()
    x, _ = shard.tensors()
    if config.optimizer == "lbfgs":
        report = lbfgs_sparse(model, x, config, ctx, run, name, shape)
    else:
        report = minibatch_sparse(model, shard.rebatched(config.batch_size, labels=False),
                                  config, ctx, run, name, shape)
    seconds = time.perf_counter() - started
    with torch.no_grad():
        x_hat, a2 = model(x)  # (n, n_visible), (n, n_hidden)
        _, terms = ae.sparse_share(x, x_hat, a2, model.weights(), rho=config.sae.rho,
                                   beta=config.sae.beta, lam=config.sae.lam,
                                   reduce_sum=make_reduce(ctx, f"{name}.final"))
    draw_filters(run, f"{name}/filters", model.encoder.weight, shape,
                 report.get("iterations", report.get("steps", 0)))
    report = {**report, **terms.floats(), "seconds": seconds,
              "parameters": parameters_agree(model, ctx, f"{name}.agree")}
    run.print(f"{name}: cost {report['cost']:.6f} = reconstruction "
              f"{report['reconstruction']:.6f} + weight decay {report['weight_decay']:.6f} + "
              f"sparsity {report['sparsity']:.6f}; {seconds:.1f} s; parameters identical on "
              f"{report['parameters']['ranks']} rank(s): {report['parameters']['identical']}")
    return report


def sparse_data(config: Config, ctx: Context, run: RunLog,
                labels: bool = False) -> tuple[dataset.Data, Config]:
    """The data, held in memory (J is taken over the whole shard), and the config with its
    layers fitted to it."""
    data = dataset.load(config, ctx, run, labels=labels, held=True)
    config = dataset.fit_layers(config, data)
    data.train = data.train.to(dtype(config))
    data.test = data.test.to(dtype(config)) if data.test is not None else None
    return data, config


def train_sae(config: Config, ctx: Context, run: RunLog) -> dict[str, Any]:
    """One sparse autoencoder layers[0] → layers[1], on patches, MNIST or the user's data."""
    data, config = sparse_data(config, ctx, run)
    model = ae.SparseAutoencoder(n_visible=config.layers[0], n_hidden=config.layers[1],
                                 seed=config.seed, dtype=dtype(config)).to(ctx.device)
    report = train_sparse(model, data.train, config, ctx, run, "sae", data.picture)
    report["mean_predictor_reconstruction"] = ae.mean_predictor_error(
        data.train.tensors()[0], make_reduce(ctx, "sae.mean"))
    run.print(f"sae: reconstruction {report['reconstruction']:.4f}, always predicting the mean "
              f"example gives {report['mean_predictor_reconstruction']:.4f}")
    run.record(sae=report)
    return report


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
                     evaluate: Callable[[], dict] | None = None) -> dict:
    """Train `net` on the shard's (x, y) by full-batch L-BFGS or by minibatches through the
    engine; only the softmax weights (the last layer) are decayed, with `sae.softmax_lam`, as in
    UFLDL."""
    lam, softmax = config.sae.softmax_lam, net[-1] if isinstance(net, nn.Sequential) else net
    started = time.perf_counter()
    if optimizer == "lbfgs":
        params = list(net.parameters())
        x, y = shard.tensors()
        objective = classifier_objective(net, x, y, params, [softmax.weight], lam,
                                         make_reduce(ctx, f"{name}.sums"))
        report = lbfgs.minimize(
            params, objective, iterations=iterations, history=config.sae.lbfgs_history,
            chunk=config.log_every,
            on_chunk=lambda done, cost: run.print(f"{name} L-BFGS iteration {done}: cost "
                                                  f"{cost:.6f}"))
    else:
        def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits, y, label_smoothing=config.label_smoothing) \
                + 0.5 * lam * (softmax.weight ** 2).sum()
        stage = engine.Stage(name=name, model=net, loss=loss, epochs=iterations, lr=config.lr,
                             evaluate=evaluate)
        final = engine.fit(stage, shard.rebatched(config.batch_size),
                           dataclasses.replace(config, optimizer=optimizer), ctx, run)
        report = {k: v for k, v in final.items() if k != "test"}  # final is in the history
    return {**report, "seconds": time.perf_counter() - started,
            "parameters": parameters_agree(net, ctx, f"{name}.agree")}


def pretrain(shard: DeviceShard, config: Config, ctx: Context, run: RunLog,
             shape: tuple[int, int] | None) -> tuple[list[nn.Linear], DeviceShard, list[dict]]:
    """Greedy layer-wise pretraining: each sparse autoencoder on the previous one's a2."""
    encoders, reports = [], []
    for i, n_hidden in enumerate(config.layers[1:-1]):
        model = ae.SparseAutoencoder(n_visible=shard.shape[0], n_hidden=n_hidden,
                                     seed=config.seed + i,
                                     dtype=shard.tensors()[0].dtype).to(ctx.device)
        reports.append(train_sparse(model, shard, config, ctx, run, f"layer{i + 1}",
                                    shape if i == 0 else None))
        shard = shard.mapped(model.encode)  # (n, n_hidden): the next layer's input
        encoders.append(model.encoder)
    return encoders, shard, reports


def check_stacked(config: Config) -> None:
    if len(config.layers) < 3:
        raise ConfigError("family 'stacked_ae' needs layers [inputs, hidden..., classes], got "
                          f"{list(config.layers)}")
    if config.sae.finetune_optimizer not in FINETUNE_OPTIMIZERS:
        raise ConfigError(f"config key 'sae.finetune_optimizer' is "
                          f"{config.sae.finetune_optimizer!r}; allowed: lbfgs, sgd, adam")


def train_stacked(config: Config, ctx: Context, run: RunLog) -> dict[str, Any]:
    """Pretrain, train the softmax on the top features, fine-tune the stack; test before/after."""
    check_stacked(config)
    started = time.perf_counter()
    data, config = sparse_data(config, ctx, run, labels=True)
    train, test, shape = data.train, data.test, data.picture
    encoders, features, layers = pretrain(train, config, ctx, run, shape)
    softmax = ae.softmax_layer(features.shape[0], config.layers[-1], seed=config.seed,
                               dtype=dtype(config)).to(ctx.device)
    softmax_report = train_classifier(
        softmax, features, config, ctx, run, name="softmax", optimizer=config.optimizer,
        iterations=config.sae.lbfgs_iterations if config.optimizer == "lbfgs" else config.epochs)
    net = ae.stack(encoders, softmax)

    def evaluate(tag: str) -> dict[str, Any]:
        if test is None:
            return {}
        return metrics.evaluate_classifier(net, test.scan(), data.classes, name=tag)

    before = evaluate("test.before")
    if before:
        run.print(f"before fine-tuning: test accuracy {100 * before['accuracy']:.2f}%")
    finetune = train_classifier(
        net, train, config, ctx, run, name="finetune", optimizer=config.sae.finetune_optimizer,
        iterations=config.sae.finetune_iterations,
        evaluate=(lambda: evaluate("test.epoch")) if test is not None else None)
    after = evaluate("test.after")
    draw_filters(run, "finetune/filters", net[0].weight, shape, 0)
    if after:
        run.print(f"after fine-tuning: test accuracy {100 * after['accuracy']:.2f}% "
                  f"(before {100 * before['accuracy']:.2f}%)")
    run.record(pretrain=layers, softmax=softmax_report, finetune_report=finetune,
               test_before_finetune=before, test_after_finetune=after)
    return {"accuracy_before_finetune": before.get("accuracy"), "accuracy": after.get("accuracy"),
            "macro_f1": after.get("macro_f1"), "error": after.get("error"),
            "parameters_identical": finetune["parameters"]["identical"],
            "seconds": time.perf_counter() - started}


def train(config: Config, ctx: Context, run: RunLog,
          state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train family "sae" or "stacked_ae" as `config` says (resuming is not supported)."""
    if state is not None:
        raise ConfigError("config key 'resume' is not supported for autoencoders; allowed: \"\"")
    if config.family == "sae":
        return train_sae(config, ctx, run)
    if config.family == "stacked_ae":
        return train_stacked(config, ctx, run)
    raise ConfigError(f"config key 'family' is {config.family!r}; this trainer allows sae, "
                      "stacked_ae")
