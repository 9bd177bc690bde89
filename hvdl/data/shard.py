"""A rank's shard of one split, served as batches on its device: held in memory or streamed.

Trainers see only this interface; hvdl/data/dataset.py builds the shards (`load`):

    for x, y in shard.batches(epoch, start):   # training batches, in the chunk rule's order
    for x, y in shard.scan():                   # every row once, in storage order (evaluation)
    shard.prefetch(epoch, start)                # start reading where training will begin
    shard.close()                               # stop reading ahead (the end of a stage)
    shard.rebatched(1000)                       # the same rows in other batches (fine-tuning)
    shard.mapped(rbm.hidden_mean)               # each example through a function (a stack)
    x, y = shard.tensors()                      # the whole shard (full-batch L-BFGS; in memory)

`DeviceShard` holds the rows as device tensors and serves index slices of them; `StreamShard`
(hvdl/data/stream.py) reads them as it goes. Both follow one `chunks.Order`, so they serve the
same batches in the same order. `epoch_rows` is ⌊n/N⌋, the rows every rank may serve per epoch,
so `steps` = epoch_rows // batch_size is the same on every rank (hvdl/data/chunks.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from hvdl.data.chunks import Order
from hvdl.errors import BadInput

SCAN_ROWS = 1000  # rows per batch of a scan
Batch = tuple[torch.Tensor, torch.Tensor | None]
Map = Callable[[torch.Tensor], torch.Tensor]


class ShardError(BadInput):
    """A shard asked for what it cannot give (a batch larger than it, rows it does not hold)."""


class Shard:
    """The interface shared by both kinds of shard."""

    batch_size: int
    epoch_rows: int  # ⌊n/N⌋: rows per rank per epoch, the same on every rank
    shape: tuple[int, ...]  # one example as batches give it, e.g. (784,) or (1, 28, 28)
    device: torch.device
    held = True  # whether the rows are in memory (False: streamed)

    @property
    def steps(self) -> int:
        return self.epoch_rows // self.batch_size

    def __len__(self) -> int:
        raise NotImplementedError

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        raise NotImplementedError

    def scan(self, rows: int = SCAN_ROWS) -> Iterator[Batch]:
        raise NotImplementedError

    def prefetch(self, epoch: int, start: int = 0) -> None:
        """Begin reading the batches `batches(epoch, start)` will give (nothing to do when
        held)."""

    def close(self) -> None:
        """Stop any reading ahead (nothing to do when held); `batches` starts it again."""

    def rebatched(self, batch_size: int, *, labels: bool = True, key: str = "batch_size") -> Shard:
        """The same rows in batches of `batch_size` (without labels if not `labels`)."""
        raise NotImplementedError

    def mapped(self, fn: Map) -> Shard:
        raise NotImplementedError

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise ShardError("this shard is streamed, not held in memory; allowed: data.memory "
                         "'device' (or 'auto' with a shard under data.budget_mb) for full-batch "
                         "training")

    def head(self, rows: int) -> torch.Tensor:
        """The first `rows` examples in storage order (a training slice to monitor)."""
        taken, out = 0, []
        for x, _ in self.scan():
            out.append(x[:rows - taken])
            taken += len(out[-1])
            if taken >= rows:
                break
        return torch.cat(out) if out else torch.zeros((0, *self.shape), device=self.device)

    def check_batch(self, batch_size: int, key: str = "batch_size") -> None:
        if self.epoch_rows // batch_size == 0:
            raise ShardError(f"config key '{key}' is {batch_size}, larger than a shard of "
                             f"{self.epoch_rows} examples; allowed: 1 to {self.epoch_rows}")


class DeviceShard(Shard):
    """A shard held as device tensors; batches are index slices of them."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor | None, *, batch_size: int,
                 epoch_rows: int | None = None, order: Order | None = None, seed: int = 0,
                 shuffle: bool = True, steps: int | None = None) -> None:
        self.x, self.y = x, y  # (n, *shape) and (n,), already on the device
        self.batch_size, self.device, self.shape = batch_size, x.device, tuple(x.shape[1:])
        self.order = order or Order.whole(len(x), seed, shuffle)
        if epoch_rows is None:
            epoch_rows = len(x) if steps is None else steps * batch_size
        self.epoch_rows = epoch_rows
        if self.order.shuffle and self.steps * batch_size > len(x):
            raise ShardError(f"a shard of {len(x)} examples cannot give {self.steps} batches of "
                             f"{batch_size}")

    def __len__(self) -> int:
        return len(self.x)

    def indices(self, epoch: int) -> torch.Tensor:
        """This epoch's order of the rows, on the device."""
        return torch.from_numpy(self.order.indices(epoch)).to(self.device)

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Yield (x, y) batches of `epoch`, beginning at batch `start` (for resuming)."""
        if not self.order.shuffle:  # an evaluation shard: every row once
            yield from self.scan(self.batch_size)
            return
        order = self.indices(epoch)
        for step in range(start, self.steps):
            idx = order[step * self.batch_size:(step + 1) * self.batch_size]
            yield self.x[idx], (None if self.y is None else self.y[idx])

    def scan(self, rows: int = SCAN_ROWS) -> Iterator[Batch]:
        for lo in range(0, len(self.x), rows):
            yield self.x[lo:lo + rows], (None if self.y is None else self.y[lo:lo + rows])

    def like(self, x: torch.Tensor, y: torch.Tensor | None, batch_size: int) -> DeviceShard:
        return DeviceShard(x, y, batch_size=batch_size, epoch_rows=self.epoch_rows,
                           order=self.order)

    def rebatched(self, batch_size: int, *, labels: bool = True,
                  key: str = "batch_size") -> DeviceShard:
        self.check_batch(batch_size, key)
        return self.like(self.x, self.y if labels else None, batch_size)

    @torch.no_grad()
    def mapped(self, fn: Map) -> DeviceShard:
        x = torch.cat([fn(v) for v in self.x.split(SCAN_ROWS)]) if len(self.x) else self.x
        return self.like(x, self.y, self.batch_size)

    def to(self, dtype: torch.dtype) -> DeviceShard:
        return self.like(self.x.to(dtype), self.y, self.batch_size)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.x, self.y


Reload = Callable[[Any], tuple[Shard, "Shard | None"]]  # a world's context -> (train, test)


@dataclass
class Shards:
    """A rank's training and test shards; `refresh` deals them again when elastic training
    changes the world (the stages' closures read `train` and `test` when they run)."""

    train: Shard
    test: Shard | None = None
    reload: Reload | None = None
    dealt: tuple[int, int] | None = None  # (rank, world size) they were dealt for

    def refresh(self, ctx: Any) -> None:
        """Deal them for `ctx`'s rank and world size, unless they already are."""
        if self.reload is not None and self.dealt != (ctx.rank, ctx.size):
            self.train, self.test = self.reload(ctx)
            self.dealt = (ctx.rank, ctx.size)

    def derived(self, train: Callable[[Shard], Shard],
                test: Callable[[Shard], Shard] | None = None) -> Shards:
        """New shards made from these by `train` (and `test`, default the same), dealt again
        the same way after a refresh."""
        test = test or train

        def again(ctx: Any) -> tuple[Shard, Shard | None]:
            self.refresh(ctx)
            return train(self.train), (None if self.test is None else test(self.test))

        return Shards(train(self.train), None if self.test is None else test(self.test),
                      again if self.reload is not None else None, self.dealt)

    def mapped(self, fn: Map) -> Shards:
        """Each example of both shards through `fn` (the next RBM's data, say)."""
        return self.derived(lambda s: s.mapped(fn))
