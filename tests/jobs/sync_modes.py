"""The synchronisation modes of hvdl/loop/sync.py on the same data, on however many ranks are
launched.

    horovodrun --gloo -np 2 python tests/jobs/sync_modes.py OUT.json

Each rank trains LeNet-5 (the same start everywhere) for a few steps on its own batches under
each mode, and rank 0 writes, per mode, the largest difference to the reference mode and
whether the ranks ended with the same weights. tests/test_sync.py checks the figures.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

import torch
import torch.nn.functional as F

from hvdl import config as configlib
from hvdl import dist
from hvdl.loop import sync
from hvdl.models.cnn import LeNet5

BATCH, STEPS = 8, 4


def batches(rank: int, steps: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(100 + rank)
    return [(torch.randn(batch, 1, 28, 28, generator=gen),
             torch.randint(0, 10, (batch,), generator=gen)) for _ in range(steps)]


def train(perf: dict[str, Any], data: list, momentum: float) -> dict[str, torch.Tensor]:
    """Steps of SGD through `sync.wrap` with `perf` overrides; the weights after `settle`."""
    config = configlib.build({f"perf.{k}": v for k, v in perf.items()})
    torch.manual_seed(0)
    model = LeNet5()
    base = torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum)
    optimizer = sync.wrap(base, model, config)
    for x, y in data:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    sync.settle(optimizer)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def agree(weights: dict[str, torch.Tensor], name: str) -> bool:
    """Whether every rank holds bitwise the same weights (a collective)."""
    flat = torch.cat([w.reshape(-1) for w in weights.values()]).numpy().tobytes()
    digests = dist.allgather_object(hashlib.sha256(flat).hexdigest(), name=name)
    return len(set(digests)) == 1


def main(out: str) -> None:
    ctx = dist.init(threads=1)
    data = batches(ctx.rank, STEPS, BATCH)
    pairs = data[0::2], data[1::2]
    joined = [(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in zip(*pairs)]
    # name: (perf overrides, data, momentum, reference name)
    modes = {
        "hooks": ({"grad_sync": "hooks"}, data, 0.9, None),
        "fused": ({"grad_sync": "fused"}, data, 0.9, "hooks"),
        "hooks_fp16": ({"grad_sync": "hooks", "fp16_compression": True}, data, 0.9, None),
        "fused_fp16": ({"fp16_compression": True}, data, 0.9, "hooks_fp16"),
        "plain_sgd": ({}, data, 0.0, None),
        "average_k1": ({"sync": "average", "sync_every": 1}, data, 0.0, "plain_sgd"),
        "average_k1_momentum": ({"sync": "average", "sync_every": 1}, data, 0.9, "fused"),
        "average_k3": ({"sync": "average", "sync_every": 3}, data, 0.9, "fused"),
        "joined_batches": ({}, joined, 0.9, None),
        "two_passes": ({"backward_passes_per_step": 2}, data, 0.9, "joined_batches"),
    }
    weights, report = {}, {}
    for name, (perf, batches_, momentum, reference) in modes.items():
        weights[name] = train(perf, batches_, momentum)
        report[name] = {"ranks_agree": agree(weights[name], f"agree.{name}"),
                        "max_diff": difference(weights[name], weights[reference])
                        if reference else None, "reference": reference}
    report["moved"] = difference(weights["fused"], train({}, [], 0.9))
    if ctx.is_root:
        with open(out, "w") as f:
            json.dump({"size": ctx.size, "modes": report}, f, indent=2)
    dist.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
