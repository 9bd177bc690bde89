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
from hvdl.data import loading, patches
from hvdl.data.shard import DeviceShard, steps_per_epoch
from hvdl.dist import Context
from hvdl.models import autoencoder as ae
from hvdl.runlog import RunLog
from hvdl.viz import display_scale, filter_grid

MNIST_SHAPE = (28, 28)
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


def minibatch_shard(x: torch.Tensor, y: torch.Tensor | None, total: int, config: Config,
                    ctx: Context) -> DeviceShard:
    """This rank's examples served in the same number of batches on every rank."""
    steps = steps_per_epoch(total, ctx.size, config.batch_size)
    if steps == 0:
        raise ConfigError(f"config key 'batch_size' is {config.batch_size}, larger than a shard "
                          f"of {total // ctx.size}; allowed: 1 to {total // ctx.size}")
    return DeviceShard(x, y, batch_size=config.batch_size, steps=steps,
                       seed=config.seed + 1000 * ctx.rank)


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


def train_sparse(model: ae.SparseAutoencoder, x: torch.Tensor, total: int, config: Config,
                 ctx: Context, run: RunLog, name: str,
                 shape: tuple[int, int] | None) -> dict[str, Any]:
    """Train one sparse autoencoder on this rank's `x` (n, n_visible) of `total` examples."""
    started = time.perf_counter()
    if config.optimizer == "lbfgs":
        report = lbfgs_sparse(model, x, config, ctx, run, name, shape)
    else:
        shard = minibatch_shard(x, None, total, config, ctx)
        report = minibatch_sparse(model, shard, config, ctx, run, name, shape)
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


def sparse_data(config: Config, ctx: Context) -> tuple[torch.Tensor, int, tuple[int, int]]:
    """This rank's examples (n, n_visible), the total over ranks, and the picture shape."""
    if config.dataset == "patches":
        p = config.patches
        x = patches.sample_patches(p.source, count=p.count, size=p.size, seed=config.seed,
                                   rank=ctx.rank, ranks=ctx.size,
                                   zca_epsilon=p.zca_epsilon if p.zca else None,
                                   reduce_sum=make_reduce(ctx, "patches.stats"))
        return torch.as_tensor(x, dtype=dtype(config)).to(ctx.device), p.count, (p.size, p.size)
    images, _ = loading.mnist_arrays(config, ctx, "train")
    pixels = loading.mnist_pixels(images, flatten=True, standardize=False)  # (N, 784) in [0, 1]
    shard = loading.device_shard(pixels, None, config, ctx, train=False)
    return shard.x.to(dtype(config)), len(pixels), MNIST_SHAPE


def train_sae(config: Config, ctx: Context, run: RunLog) -> dict[str, Any]:
    """One sparse autoencoder layers[0] → layers[1] on patches or MNIST."""
    x, total, shape = sparse_data(config, ctx)
    if x.shape[1] != config.layers[0]:
        raise ConfigError(f"config key 'layers' starts with {config.layers[0]} inputs, the "
                          f"{config.dataset} examples have {x.shape[1]}; allowed: {x.shape[1]}")
    model = ae.SparseAutoencoder(n_visible=config.layers[0], n_hidden=config.layers[1],
                                 seed=config.seed, dtype=dtype(config)).to(ctx.device)
    report = train_sparse(model, x, total, config, ctx, run, "sae", shape)
    report["mean_predictor_reconstruction"] = ae.mean_predictor_error(
        x, make_reduce(ctx, "sae.mean"))
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


def train_classifier(net: nn.Module, shard: DeviceShard, x: torch.Tensor, total: int,
                     config: Config, ctx: Context, run: RunLog, *, name: str, optimizer: str,
                     iterations: int, evaluate: Callable[[], dict] | None = None) -> dict:
    """Train `net` on (x, shard.y) by full-batch L-BFGS or by minibatches through the engine;
    only the softmax weights (the last layer) are decayed, with `sae.softmax_lam`, as in UFLDL."""
    lam, softmax = config.sae.softmax_lam, net[-1] if isinstance(net, nn.Sequential) else net
    started = time.perf_counter()
    if optimizer == "lbfgs":
        params = list(net.parameters())
        objective = classifier_objective(net, x, shard.y, params, [softmax.weight], lam,
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
        batches = minibatch_shard(x, shard.y, total, config, ctx)
        final = engine.fit(stage, batches, dataclasses.replace(config, optimizer=optimizer),
                           ctx, run)
        report = {k: v for k, v in final.items() if k != "test"}  # final is in the history
    return {**report, "seconds": time.perf_counter() - started,
            "parameters": parameters_agree(net, ctx, f"{name}.agree")}


def pretrain(x: torch.Tensor, total: int, config: Config, ctx: Context,
             run: RunLog) -> tuple[list[nn.Linear], torch.Tensor, list[dict]]:
    """Greedy layer-wise pretraining: each sparse autoencoder on the previous one's a2."""
    encoders, reports = [], []
    for i, n_hidden in enumerate(config.layers[1:-1]):
        model = ae.SparseAutoencoder(n_visible=x.shape[1], n_hidden=n_hidden,
                                     seed=config.seed + i, dtype=x.dtype).to(ctx.device)
        shape = MNIST_SHAPE if i == 0 else None
        reports.append(train_sparse(model, x, total, config, ctx, run, f"layer{i + 1}", shape))
        with torch.no_grad():
            x = model.encode(x)  # (n, n_hidden): the next layer's input
        encoders.append(model.encoder)
    return encoders, x, reports


def check_stacked(config: Config) -> None:
    if config.dataset != "mnist" or len(config.layers) < 3:
        raise ConfigError("family 'stacked_ae' needs dataset 'mnist' and layers "
                          f"[784, hidden..., 10], got {config.dataset!r} {config.layers}")
    if config.sae.finetune_optimizer not in FINETUNE_OPTIMIZERS:
        raise ConfigError(f"config key 'sae.finetune_optimizer' is "
                          f"{config.sae.finetune_optimizer!r}; allowed: lbfgs, sgd, adam")


def train_stacked(config: Config, ctx: Context, run: RunLog) -> dict[str, Any]:
    """Pretrain, train the softmax on the top features, fine-tune the stack; test before/after."""
    check_stacked(config)
    started = time.perf_counter()
    train, test = loading.mnist_shards(config, ctx, flatten=True, standardize=False)
    train.x, test.x = train.x.to(dtype(config)), test.x.to(dtype(config))
    total = config.train_size or 60000
    encoders, features, layers = pretrain(train.x, total, config, ctx, run)
    softmax = ae.softmax_layer(features.shape[1], config.layers[-1], seed=config.seed,
                               dtype=dtype(config)).to(ctx.device)
    softmax_report = train_classifier(
        softmax, train, features, total, config, ctx, run, name="softmax",
        optimizer=config.optimizer, iterations=config.sae.lbfgs_iterations
        if config.optimizer == "lbfgs" else config.epochs)
    net = ae.stack(encoders, softmax)

    def evaluate(tag: str) -> dict[str, Any]:
        return metrics.evaluate_classifier(net, test.batches(0), config.layers[-1], name=tag)

    before = evaluate("test.before")
    run.print(f"before fine-tuning: test accuracy {100 * before['accuracy']:.2f}%")
    finetune = train_classifier(
        net, train, train.x, total, config, ctx, run, name="finetune",
        optimizer=config.sae.finetune_optimizer, iterations=config.sae.finetune_iterations,
        evaluate=lambda: evaluate("test.epoch"))
    after = evaluate("test.after")
    draw_filters(run, "finetune/filters", net[0].weight, MNIST_SHAPE, 0)
    run.print(f"after fine-tuning: test accuracy {100 * after['accuracy']:.2f}% "
              f"(before {100 * before['accuracy']:.2f}%)")
    run.record(pretrain=layers, softmax=softmax_report, finetune_report=finetune,
               test_before_finetune=before, test_after_finetune=after)
    return {"accuracy_before_finetune": before["accuracy"], "accuracy": after["accuracy"],
            "macro_f1": after["macro_f1"], "error": after["error"],
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
