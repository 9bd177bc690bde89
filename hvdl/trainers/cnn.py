"""Train a CNN classifier data-parallel: the LeNet-5 recipe, on MNIST or the user's images.

    horovodrun -np 2 python -m hvdl.train --model lenet5
    horovodrun -np 2 python -m hvdl.train --model lenet5 --data.path train.parquet \
        --data.test_path test.parquet --data.label label --data.shape 1,28,28 --data.scale unit
    horovodrun -np 2 --min-np 1 --max-np 4 --host-discovery-script S \
        python -m hvdl.train --model lenet5 --elastic          # elastic: hvdl/loop/elastic.py
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from hvdl import loop, metrics
from hvdl.config import Config
from hvdl.data import dataset
from hvdl.data.record import startup_line
from hvdl.data.settings import Settings
from hvdl.data.shard import Shard
from hvdl.dist import Context
from hvdl.models.cnn import LeNet5
from hvdl.runlog import RunLog


def build(config: Config, data: dict[str, Any]) -> torch.nn.Module:
    """LeNet-5 for the data's example shape and classes (`data`: the dataset's record), as
    training starts it and as a checkpoint is loaded into (hvdl/families.py)."""
    return LeNet5(classes=len(data["classes"]), shape=tuple(data["shape"]))


def evaluate(model: torch.nn.Module, test: Shard | None,
             classes: tuple[Any, ...]) -> dict[str, Any] | None:
    if test is None:
        return None
    return metrics.evaluate_classifier(model, test.scan(), classes)


def train(config: Config, ctx: Context, run: RunLog,
          state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train LeNet-5 for `config.epochs`, evaluating on the test split after each epoch."""
    data = dataset.load(Settings.of(config), ctx, labels=True, images=True)
    run.record_data(data.info, startup_line(data.info, ctx))
    torch.manual_seed(config.seed)  # identical start on every rank, broadcast confirms it
    model = build(config, data.info).to(ctx.device)
    shards = data.shards()  # read by evaluate when it runs: elastic training deals them again
    loss = partial(F.cross_entropy, label_smoothing=config.label_smoothing)
    stage = loop.Stage(
        name="train", model=model, loss=loss, epochs=config.epochs, lr=config.lr,
        evaluate=(lambda: evaluate(model, shards.test, data.classes)) if data.test else None)
    final = loop.fit(stage, shards, config, ctx, run, state=state)
    return final.get("test") or {}
