"""Per-rank shards held on the device, served as index slices.

Sharding rule: the dataset is permuted once with the run's seed (so every shard holds a mix of
classes), and rank r of N keeps the contiguous block `[r*n//N, (r+1)*n//N)` of that permutation.
Shards are disjoint and together cover all n examples; their sizes differ by at most one.

Each epoch every rank reshuffles its own shard from `seed + epoch` and takes the same number of
full batches, `(n // N) // batch_size`, so the ranks' collectives stay in step. The few examples
left over are a different random handful each epoch, so none is left out for the whole run.
Evaluation shards (`shuffle=False`, `drop_last=False`) serve every example exactly once.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch


def shard_indices(n: int, rank: int, size: int, seed: int) -> np.ndarray:
    """Indices of rank `rank`'s shard of `n` examples, out of `size` shards."""
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} is outside 0..{size - 1}")
    if n < size:
        raise ValueError(f"{n} examples cannot be shared by {size} ranks; use at most {n} ranks")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[rank * n // size:(rank + 1) * n // size])


def steps_per_epoch(n: int, size: int, batch_size: int) -> int:
    """Full batches every rank takes per epoch (the same on all ranks)."""
    return (n // size) // batch_size


class DeviceShard:
    """One rank's examples as device tensors; `batches(epoch)` yields slices of them."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor | None, *, batch_size: int,
                 steps: int | None = None, seed: int = 0, shuffle: bool = True) -> None:
        self.x, self.y = x, y  # (n, ...) and (n,), already on the device
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        full = len(x) // batch_size if shuffle else -(-len(x) // batch_size)
        self.steps = full if steps is None else steps
        if shuffle and self.steps * batch_size > len(x):
            raise ValueError(f"a shard of {len(x)} examples cannot give {self.steps} batches of "
                             f"{batch_size}; use batch_size <= {len(x) // max(self.steps, 1)}")

    def __len__(self) -> int:
        return len(self.x)

    def order(self, epoch: int) -> torch.Tensor:
        """This epoch's example order: a permutation drawn from `seed + epoch`."""
        if not self.shuffle:
            return torch.arange(len(self.x), device=self.x.device)
        gen = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(len(self.x), generator=gen).to(self.x.device)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Yield (x, y) batches of `epoch`, beginning at batch `start` (for resuming)."""
        order = self.order(epoch)
        for step in range(start, self.steps):
            idx = order[step * self.batch_size:(step + 1) * self.batch_size]
            yield self.x[idx], (None if self.y is None else self.y[idx])
