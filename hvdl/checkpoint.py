"""Checkpoints: written by rank 0 atomically, read back with `weights_only=True`.

A checkpoint is a dict of tensors and plain values, never pickled modules:
`{"model": state_dict, "optimizer": state_dict, "config": to_dict(config), "stage": str,
"epoch": int, "batch": int, "step": int, "rng": [{...} per rank], **extra}`, where `epoch` counts
whole epochs done and `batch` the batches done of the next (hvdl/loop/epochs.py writes them). It is
written to a temporary file in the same folder, flushed to disk, then renamed over its final name,
so a crash never leaves half a file under a checkpoint's name; only the newest `keep` are kept.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hvdl import config as configlib
from hvdl.config import Config
from hvdl.errors import BadInput


class CheckpointError(BadInput):
    """A checkpoint that cannot be used: missing, truncated, or from another model."""


def folder(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def save(run_dir: Path | None, payload: dict[str, Any], *, step: int, keep: int) -> Path | None:
    """Write `payload` as checkpoints/step-<step>.pt and prune old ones; no-op off rank 0."""
    if run_dir is None:
        return None
    out = folder(run_dir)
    path = write(out / f"step-{step:09d}.pt", payload)
    for old in sorted(out.glob("step-*.pt"))[:-keep]:
        old.unlink()
    return path


def save_stage(run: Any, name: str, model: torch.nn.Module, config: Config) -> None:
    """Write a finished stage's weights to stages/<name>.pt in `run`'s folder; off rank 0 a
    no-op."""
    if run.dir is not None:
        write(run.dir / "stages" / f"{name}.pt", {"model": model.state_dict(),
                                                  "config": configlib.to_dict(config),
                                                  "stage": name,
                                                  "data": data_record(run.dataset)})


def data_record(info: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a checkpoint keeps of the dataset: enough to read new data as training did."""
    if info is None:
        return None
    kept = {k: info[k] for k in ("format", "path", "fingerprint", "features", "shape", "label",
                                 "classes", "scale")}
    return {**kept, "columns": info.get("columns")}  # names the features (hvdl.spark.transform)


def write(path: Path, payload: dict[str, Any]) -> Path:
    """torch.save to a temporary file beside `path`, flushed to disk, renamed over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def latest(run_dir: Path) -> Path | None:
    found = sorted(folder(run_dir).glob("step-*.pt"))
    return found[-1] if found else None


def load(path: Path, config: Config | None = None) -> dict[str, Any]:
    """Read a checkpoint; with `config`, check that it belongs to the same model."""
    payload = read(path, "a file <run>/checkpoints/step-N.pt, or --resume auto")
    if config is not None:
        saved = payload["config"]
        mine = configlib.to_dict(config)
        for key in ("family", "layers"):
            if not same(saved.get(key), mine[key]):
                raise CheckpointError(
                    f"checkpoint {path} is for {key} {saved.get(key)!r}, this run has "
                    f"{mine[key]!r}; resume with the recipe that wrote it")
    return payload


def same(saved: Any, mine: Any) -> bool:
    """Whether a saved value matches this run's; a 0 in this run's layers comes from the data."""
    if isinstance(mine, list) and isinstance(saved, list) and len(saved) == len(mine):
        return all(m in (0, s) for s, m in zip(saved, mine))
    return saved == mine


def read(path: Path, allowed: str) -> dict[str, Any]:
    """A checkpoint or stage file's payload; CheckpointError (naming `allowed`) if unusable."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; allowed: {allowed}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for damaged files
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt "
                              f"({type(err).__name__}); use a complete hvdl checkpoint") from None
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        raise CheckpointError(f"checkpoint {path} was not written by hvdl (no model and config)")
    return payload


def rng_state() -> dict[str, Any]:
    """Every random generator a run uses, to resume with the same draws."""
    state = {"torch": torch.get_rng_state(),
             "numpy": torch.from_numpy(np.frombuffer(
                 np.random.get_state()[1].astype("<u4").tobytes(), dtype=np.uint8).copy()),
             "numpy_pos": int(np.random.get_state()[2]),
             "python": torch.tensor(list(random.getstate()[1]), dtype=torch.int64)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys = np.frombuffer(state["numpy"].numpy().tobytes(), dtype="<u4").astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"]))
    random.setstate((3, tuple(int(v) for v in state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
