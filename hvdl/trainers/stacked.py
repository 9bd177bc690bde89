"""Train a stacked autoencoder classifier (family "stacked_ae").

    horovodrun -np 2 python -m hvdl.train --model stacked_ae_mnist # 784-200-200-10

The stack is pretrained greedily, each layer a sparse autoencoder (hvdl/trainers/sparse.py) on
the previous layer's hidden activations, then a softmax classifier is trained on the top
features, and the whole stack is fine-tuned (`sae.finetune_optimizer`), by full-batch L-BFGS
or by minibatches through the loop. Results: results/autoencoders/README.md.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hvdl import checkpoint, loop, metrics
from hvdl.config import Config, ConfigError
from hvdl.data.shard import DeviceShard, Shards
from hvdl.dist import Context
from hvdl.loop import lbfgs, sync
from hvdl.models import autoencoder as ae
from hvdl.runlog import RunLog
from hvdl.trainers.sparse import Carry, draw_filters, dtype, make_reduce, sparse_data, train_sparse

FINETUNE_OPTIMIZERS = ("lbfgs", "sgd", "adam")


def build_stacked(config: Config, data: dict[str, Any] | None = None) -> nn.Sequential:
    """The stacked autoencoder classifier as a checkpoint is loaded into: hidden sigmoid layers,
    then softmax, put together by `ae.stack` as `train_stacked` puts its trained parts."""
    hidden = [nn.Linear(a, b, dtype=dtype(config)) for a, b in pairwise(config.layers[:-1])]
    return ae.stack(hidden, nn.Linear(config.layers[-2], config.layers[-1], dtype=dtype(config)))


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


def train_softmax(features: Shards, config: Config, ctx: Context, run: RunLog,
                  state: dict[str, Any] | None, done: dict[str, Any]) -> tuple[nn.Linear, dict]:
    """The softmax layer trained on the top layer's features (stage "softmax"), and its
    report."""
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
    return softmax, report


def train_stacked(config: Config, ctx: Context, run: RunLog,
                  state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pretrain, train the softmax on the top features, fine-tune the stack; test before/after.
    Without hidden layers (layers [inputs, classes]) this is softmax regression alone."""
    check_stacked(config)
    started = time.perf_counter()
    data, shards, config = sparse_data(config, ctx, run, labels=True)
    train, test, shape, done = shards.train, shards.test, data.picture, {}
    encoders, features = pretrain(shards, config, ctx, run, shape, state, done)
    softmax, report = train_softmax(features, config, ctx, run, state, done)
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
