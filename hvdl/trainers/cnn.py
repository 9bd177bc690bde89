"""Train a CNN classifier on MNIST, data-parallel: the LeNet-5 recipe.

    horovodrun -np 2 python -m hvdl.train --model lenet5
    horovodrun -np 2 --min-np 1 --max-np 4 --host-discovery-script S \
        python -m hvdl.train --model lenet5 --elastic          # elastic: hvdl/elastic.py
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from hvdl import elastic, engine, metrics
from hvdl.config import Config
from hvdl.data.loading import mnist_shards
from hvdl.dist import Context
from hvdl.models.cnn import LeNet5
from hvdl.runlog import RunLog


def build_classifier(config: Config, ctx: Context) -> torch.nn.Module:
    torch.manual_seed(config.seed)  # identical start on every rank, broadcast confirms it
    return LeNet5().to(ctx.device)


def train(config: Config, ctx: Context, run: RunLog,
          state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train LeNet-5 for `config.epochs`, evaluating on the test set after each epoch."""
    train_shard, test_shard = mnist_shards(config, ctx, flatten=False, standardize=True)
    model = build_classifier(config, ctx)
    loss = partial(F.cross_entropy, label_smoothing=config.label_smoothing)
    stage = engine.Stage(
        name="train", model=model, loss=loss, epochs=config.epochs, lr=config.lr,
        evaluate=lambda: metrics.evaluate_classifier(model, test_shard.batches(0)))
    if config.elastic:  # workers come and go: the elastic loop cuts the shards again each time
        final = elastic.fit(stage, partial(mnist_shards, config, flatten=False, standardize=True),
                            lambda test: metrics.evaluate_classifier(model, test.batches(0)),
                            config, ctx, run, state=state)
    else:
        final = engine.fit(stage, train_shard, config, ctx, run, state=state)
    return final.get("test", {})
