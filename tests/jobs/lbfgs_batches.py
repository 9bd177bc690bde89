"""Minibatch L-BFGS (hvdl/loop/lbfgs.py) on the same global minibatches, on however many ranks.

    mpirun -np 2 python tests/jobs/lbfgs_batches.py OUT.json     (or horovodrun, torchrun)

Every rank draws the same global minibatches and keeps its own equal part of each; a small
float64 classifier takes a few MinibatchLBFGS steps through loop.train_epoch's closure path.
Rank 0 writes the final weights, the losses and whether the ranks agree bitwise;
tests/test_rbm.py compares 1 rank with 2.
"""

from __future__ import annotations

import hashlib
import json
import sys

import torch
import torch.nn.functional as F

from hvdl import dist
from hvdl.loop import lbfgs

BATCH, STEPS, FEATURES, CLASSES = 24, 3, 6, 3


def main(out: str) -> None:
    ctx = dist.init(threads=1)
    gen = torch.Generator().manual_seed(5)
    data = [(torch.randn(BATCH, FEATURES, generator=gen, dtype=torch.float64),
             torch.randint(0, CLASSES, (BATCH,), generator=gen)) for _ in range(STEPS)]
    part = BATCH // ctx.size
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, 5), torch.nn.Sigmoid(),
                                torch.nn.Linear(5, CLASSES)).double()
    optimizer = lbfgs.MinibatchLBFGS(model.parameters(), iterations=3)
    losses, lowered = [], []
    for xs, ys in data:
        x, y = xs[ctx.rank * part:(ctx.rank + 1) * part], ys[ctx.rank * part:(ctx.rank + 1) * part]
        with torch.no_grad():
            before = float(F.cross_entropy(model(xs), ys))  # on the whole minibatch
        losses.append(float(optimizer.step(lambda: F.cross_entropy(model(x), y))))
        lowered.append(losses[-1] < before)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    digests = dist.allgather_object(hashlib.sha256(flat.numpy().tobytes()).hexdigest(), "digest")
    if ctx.is_root:
        with open(out, "w") as f:
            json.dump({"size": ctx.size, "weights": flat.tolist(), "losses": losses,
                       "lowered": lowered,
                       "ranks_agree": len(set(digests)) == 1}, f)
    dist.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
