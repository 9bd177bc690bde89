"""The families hvdl trains, in one table: each one's trainer, the model its last stage leaves,
and what that model can do.

| family | its last stage | classifier | encoder (`--layer`) | reconstruction |
|---|---|---|---|---|
| cnn | `train`: LeNet-5 | logits | | |
| sae | `sae`: one sparse autoencoder | | the hidden layer | x̂ |
| stacked_ae | `finetune` (`softmax` without hidden layers) | logits | a hidden layer (the last) | |
| rbm | `pretrain1`: one RBM | | E[h | v] | mean-field v̂, and the free energy |
| dbn | `finetune`: the RBM stack as a net, softmax on top | logits | a hidden layer (the last) | |
| deep_ae | `finetune`: the unrolled stack | | an encoder layer (the code) | x̂ |

`hvdl eval` and `hvdl encode` ask this table for what a checkpoint's model can do, and
tests/test_families.py checks every entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from hvdl import checkpoint
from hvdl import config as configlib
from hvdl.config import Config
from hvdl.models import rbm as rbm_models
from hvdl.trainers import cnn, rbm, saved_stack, sparse, stacked

Fn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Family:
    name: str
    train: Callable[..., dict[str, Any]]  # (config, ctx, run, state) -> the final figures
    last: Callable[[Config], str]  # the name of the last stage
    build: Callable[[Config, dict[str, Any]], nn.Module]  # its model, untrained (config, data)
    labels: bool = False  # training needs labels
    images: bool = False  # examples are (C, H, W)
    classifier: Callable[[nn.Module], Fn] | None = None  # x -> logits
    encoder: Callable[[nn.Module, int], Fn] | None = None  # (model, layer) -> x -> codes
    depth: Callable[[Config], int] = lambda config: 1  # hidden layers an encoder can give
    reconstruction: Callable[[nn.Module], Fn] | None = None  # x -> x̂
    free_energy: Callable[[nn.Module], Fn] | None = None  # x -> F(x) per example
    check: Callable[[Config], None] = lambda config: None  # before any data or run folder

    @property
    def capabilities(self) -> list[str]:
        return [c for c in ("classifier", "encoder", "reconstruction", "free_energy")
                if getattr(self, c) is not None]


def sequential_encoder(net: nn.Module, layer: int) -> Fn:
    """Hidden layer `layer` (1 = the first) of a (Linear, Sigmoid, ..., Linear) net."""
    return net[:2 * layer]


def deep_encoder(model: rbm_models.DeepAutoencoder, layer: int) -> Fn:
    """Encoder layer `layer` of the deep autoencoder (its last is the code)."""
    def encode(x: torch.Tensor) -> torch.Tensor:
        for i, linear in enumerate(model.encoder[:layer]):
            x = linear(x)
            if i < len(model.encoder) - 1 or not model.linear_code:
                x = torch.sigmoid(x)
        return x
    return encode


# Each family's model is built by its trainer's one build function, for training and loading
# alike: the loaded weights then fill the same structure training filled.
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("cnn", cnn.train, lambda c: "train", cnn.build, labels=True, images=True,
           classifier=lambda m: m),
    Family("sae", sparse.train_sae, lambda c: "sae", sparse.build_sae,
           encoder=lambda m, layer: m.encode, reconstruction=lambda m: lambda x: m(x)[0]),
    Family("stacked_ae", stacked.train_stacked,
           lambda c: "finetune" if len(c.layers) > 2 else "softmax", stacked.build_stacked,
           labels=True, classifier=lambda m: m, encoder=sequential_encoder,
           depth=lambda c: len(c.layers) - 2),
    Family("rbm", rbm.train_rbm, lambda c: "pretrain1", lambda c, d: rbm.build_stack(c, data=d)[0],
           encoder=lambda m, layer: m.hidden_mean,
           reconstruction=lambda m: lambda x: m.visible_mean(m.hidden_mean(x)),
           free_energy=lambda m: m.free_energy),
    Family("dbn", rbm.train_dbn, lambda c: "finetune",
           lambda c, d: rbm_models.classifier(rbm.build_stack(c, data=d), c.layers[-1]),
           labels=True, check=saved_stack.check_pretrained, classifier=lambda m: m,
           encoder=sequential_encoder, depth=lambda c: len(c.layers) - 2),
    Family("deep_ae", rbm.train_deep_ae, lambda c: "finetune",
           lambda c, d: rbm_models.unroll(rbm.build_stack(c, data=d)),
           check=saved_stack.check_pretrained,
           encoder=deep_encoder, depth=lambda c: len(c.layers) - 1,
           reconstruction=lambda m: m.reconstruct),
)}


@dataclass
class Trained:
    """A trained model read back from a checkpoint, with what it was trained on."""

    family: Family
    config: Config
    model: nn.Module
    data: dict[str, Any]  # the dataset's record: classes, normalisation, shape
    path: Path


def load_trained(path: Path, device: torch.device | str = "cpu") -> Trained:
    """The model of a checkpoint written in (or after) its run's last stage; CheckpointError
    otherwise. A checkpoint or a stages/<name>.pt file will do."""
    allowed = "a checkpoint <run>/checkpoints/step-N.pt or <run>/stages/<last stage>.pt"
    payload = checkpoint.read(Path(path), allowed)
    config = configlib.from_dict(payload["config"])
    family = FAMILIES[config.family]
    last = family.last(config)
    if payload.get("stage") != last:
        raise checkpoint.CheckpointError(
            f"checkpoint {path} is from stage {payload.get('stage')!r} of a {config.family} run, "
            f"whose model is complete after stage {last!r}; allowed: a checkpoint of stage "
            f"{last!r} (the run's newest), or <run>/stages/{last}.pt")
    if not payload.get("data"):
        raise checkpoint.CheckpointError(
            f"checkpoint {path} holds no record of its data (classes, normalisation); allowed: "
            "a checkpoint written by this version of hvdl")
    model = family.build(config, payload["data"])
    model.load_state_dict(payload["model"])
    return Trained(family, config, model.to(device).eval(), payload["data"], Path(path))


def with_overrides(trained: Trained, overrides: list[str], data_dir: str = "") -> Config:
    """The checkpoint's config with `--KEY VALUE` overrides on top (the data to read, say)."""
    values = configlib.flatten(configlib.to_dict(trained.config), "checkpoint")
    given = configlib.parse_overrides(overrides)
    if given.get("data.test_path") and "data.test_fraction" not in given:
        values["data.test_fraction"] = 0.0  # the test data named now replaces the held-out share
    values.update(given)
    if data_dir:
        values["data_dir"] = data_dir
    return configlib.build(values)


def in_model_type(batches: Any, model: nn.Module) -> Any:
    """(x, y) batches with x in the model's floating type (a float64 sparse autoencoder)."""
    dtype = next(model.parameters()).dtype
    return ((x.to(dtype), y) for x, y in batches)
