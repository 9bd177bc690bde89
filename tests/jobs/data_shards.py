"""Each rank's shards of the datasets a JSON file names, as hvdl.data.dataset.load deals them.

    horovodrun --gloo -np 3 python tests/jobs/data_shards.py SPEC.json OUT_DIR

SPEC maps a name to the command-line options of one dataset. Feature 0 of every row is its row
id, so each rank writes OUT_DIR/<name>-rank<r>.json with the ids of its training and test
shards, its steps per epoch, its memory mode and the classes; tests/test_data_ranks.py checks
that the shards are disjoint, cover the data and take equal steps.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from hvdl import config as configlib
from hvdl import dist
from hvdl.data import dataset
from hvdl.data.settings import Settings


def ids(shard) -> list[int]:
    if shard is None:
        return []
    return [int(v) for x, _ in shard.scan() for v in x.reshape(len(x), -1)[:, 0].round()]


def main(argv: list[str] | None = None) -> int:
    spec_path, out_dir = (sys.argv[1:] if argv is None else argv)
    ctx = dist.init(threads=1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, options in json.loads(Path(spec_path).read_text()).items():
        config = configlib.load("rbm_mnist", ["--data.scale", "none", "--layers", "0,4",
                                              *options])
        data = dataset.load(Settings.of(config), ctx, labels=True)
        labels = torch.cat([y for _, y in data.train.scan()]).tolist()
        (out / f"{name}-rank{ctx.rank}.json").write_text(json.dumps({
            "train": ids(data.train), "test": ids(data.test), "steps": data.train.steps,
            "held": data.train.held, "classes": data.classes, "labels": labels,
            "batches": [ids_of(x) for x, _ in data.train.batches(0)]}))
    dist.shutdown()
    return 0


def ids_of(x: torch.Tensor) -> list[int]:
    return [int(v) for v in x.reshape(len(x), -1)[:, 0].round()]


if __name__ == "__main__":
    sys.exit(main())
