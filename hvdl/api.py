"""hvdl from a Python script: train, evaluate and encode as the commands do, under any launcher.

    import hvdl

    result = hvdl.fit("dbn_small", data={"path": "digits.csv", "label": "target",
                                         "scale": "minmax", "test_fraction": 0.2},
                      batch_size=16, rbm={"pretrain_epochs": 20, "finetune_epochs": 20})
    print(result.metrics["test"]["accuracy"], result.run_dir)
    report = hvdl.evaluate(result.checkpoint)                  # the test figures again
    manifest = hvdl.encode(result.checkpoint, out="codes/")    # the hidden features, in parts
    net = result.model                                         # a torch.nn.Module

A script runs as any hvdl program does: `python train.py`, `horovodrun -np 4 python train.py`,
`mpirun`, `srun`. Every rank calls the same functions (they are collectives), rank 0 writes the
run folder and checkpoints, and every rank gets the same result. Options are the config's
keys: top-level ones as keyword arguments, a section as a dict (`data={...}`, `rbm={...}`);
`data` may also be just a path. Bad input raises hvdl.errors.BadInput with the one-line message
the command line prints; a NaN loss raises hvdl.loop.NonFiniteLoss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hvdl import checkpoint, dist, inference
from hvdl import config as configlib
from hvdl.config import Config
from hvdl.families import Trained, load_trained
from hvdl.run import run_training


@dataclass
class Result:
    """What `fit` returns on every rank."""

    metrics: dict[str, Any]  # the final figures, as metrics.json's "final"
    run_dir: Path | None  # the run folder
    checkpoint: Path | None  # the newest checkpoint: the trained model
    trained: Trained | None  # the model read back from it, with its family and data record

    @property
    def model(self) -> Any:
        return self.trained.model if self.trained is not None else None


def build_config(model: str, options: dict[str, Any]) -> Config:
    """The recipe `model` with `options` on top: top-level keys, and sections as dicts."""
    values = configlib.flatten(configlib.to_dict(configlib.load(model, [])), "recipe")
    for key, value in options.items():
        if isinstance(value, dict):
            values.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            values[key] = value
    return configlib.build(values)


def fit(model: str = "lenet5", *, data: str | Path | dict[str, Any] | None = None,
        **options: Any) -> Result:
    """Train recipe `model` (a name in models/ or a .toml path) with `options`."""
    if data is not None:
        options["data"] = {"path": str(data)} if isinstance(data, (str, Path)) else data
    config = build_config(model, options)
    ctx = dist.start(config)
    final, run_dir = run_training(config, ctx)
    latest = checkpoint.latest(run_dir) if run_dir else None
    return Result(final, run_dir, latest, load_trained(latest, ctx.device) if latest else None)


def result(run_dir: str | Path) -> Result:
    """What `fit` returns, read back from a finished run's folder (hvdl.spark's ranks ran it)."""
    import json

    run_dir = Path(run_dir)
    final = json.loads((run_dir / "metrics.json").read_text()).get("final", {})
    latest = checkpoint.latest(run_dir)
    return Result(final, run_dir, latest, load_trained(latest) if latest else None)


def load(path: str | Path) -> Trained:
    """The trained model of a checkpoint, with its family, config and data record."""
    return load_trained(Path(path))


def evaluate(path: str | Path, **options: Any) -> dict[str, Any]:
    """The checkpoint's figures on its test split (or `data={"test_path": ...}`)."""
    return inference.evaluation(load_trained(Path(path)), overrides(options))


def encode(path: str | Path, out: str | Path, *, layer: int | None = None,
           format: str = "parquet", **options: Any) -> Path:
    """Encode every row of the checkpoint's data (or `data={"path": ...}`) into parts in `out`;
    returns the manifest's path."""
    inference.encoding(load_trained(Path(path)), Path(out), layer, format, overrides(options))
    return Path(out) / "manifest.json"


def overrides(options: dict[str, Any]) -> list[str]:
    """`options` as command-line overrides (`--key value`, `--section.key value`)."""
    argv = []
    for key, value in options.items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, v in items:
            text = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
            argv += [f"--{key}.{sub}" if sub else f"--{key}", text]
    return argv
