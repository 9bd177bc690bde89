"""Planning who reads what: the steps between opening a dataset and reading its first row.

`node_copies` gives the readers (hvdl/data/formats/) a gzip file's copy decompressed once per
node; `count_records` has the ranks count a CSV's records between them; `plan` cuts, permutes
and holds out the chunks (hvdl/data/chunks.py); `decide` holds a shard on the device when it
fits the budget, else streams it; `check_sizes`, `stored_shape` and `served_shape` check the
plan against the batch and the model. `Sharing` is how the ranks share
this work: by collectives, or, under elastic training, where no collective may run outside
Horovod's elastic loop, each rank on its own.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from hvdl import dist, host
from hvdl.config import ConfigError
from hvdl.data import chunks
from hvdl.data.chunks import Piece
from hvdl.data.formats.base import DataError, Source
from hvdl.data.formats.files import decompress, decompressed
from hvdl.data.settings import Settings
from hvdl.dist import Context
from hvdl.errors import BadInput


class Sharing:
    """How the ranks share the work: collectives, or (elastic training) each rank alone."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.collective = ctx.collective

    def gather(self, obj: Any, name: str) -> list[Any]:
        return dist.allgather_object(obj, name=name) if self.collective else [obj]

    def agree(self, fn: Callable[[], Any], name: str) -> Any:
        """fn()'s result; a bad input on any rank is raised on every rank, the first rank's."""
        result, problem = None, None
        try:
            result = fn()
        except BadInput as err:
            problem = str(err)
        found = [p for p in self.gather(problem, name) if p]
        if found:
            raise DataError(found[0])
        return result

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return dist.allreduce_sum(tensor, name="data.sum") if self.collective else tensor

    def all(self, flag: bool, name: str) -> bool:
        return dist.all_ranks(flag, name=name) if self.collective else flag


def node_copies(ctx: Context, sharing: Sharing, folder: Path,
                made: list[tuple[str, bool]]) -> Callable[[Path], Path]:
    """A gzip file's decompressed copy, made once per node by its local rank 0."""
    def local(path: Path) -> Path:
        order = dist.local_root_first(ctx) if sharing.collective else contextlib.nullcontext()
        with order:
            existed = decompressed(path, folder).is_file()
            out = decompress(path, folder)
        made.append((path.name, not existed))
        return out
    return local


def count_records(source: Source, sharing: Sharing) -> None:
    """A CSV's records per split, each split counted by one rank (a database's, in one snapshot
    of it that every rank shares); a no-op for other formats."""
    ctx = sharing.ctx
    if source.live:
        first = ctx.rank == 0 or not sharing.collective
        state = sharing.agree(lambda: source.export_state() if first else None, "data.export")
        state = sharing.gather(state, "data.state")[0]
        sharing.agree(lambda: source.import_state(state), "data.import")
    if not source.splits:
        return
    mine = range(ctx.rank, len(source.splits), ctx.size) if sharing.collective \
        else range(len(source.splits))
    counted = sharing.agree(lambda: {i: source.count(i) for i in mine}, "data.count")
    found: dict[int, tuple[int, int]] = {}
    for part in sharing.gather(counted, "data.counts"):
        found.update(part)
    source.set_counts([found[i] for i in range(len(source.splits))])


# --- the plan: chunks, held-out rows, this rank's pieces --------------------------------------

@dataclass
class Plan:
    chunk_rows: int
    chunks: int
    train: list[Piece]  # every rank's training pieces, in the permuted order
    test: list[Piece]
    test_source: Source | None


def plan(config: Settings, train: Source, test: Source | None, whole: bool = False) -> Plan:
    """Cut the training source, permute and hold out (hvdl/data/chunks.py); `whole`: every row
    of it in file order, nothing held out (to encode a dataset)."""
    file_rows = train.file_rows
    if config.train_size:
        if config.train_size > train.rows:
            raise ConfigError(f"config key 'train_size' is {config.train_size}, the training "
                              f"set has {train.rows}; allowed: 0 (all) to {train.rows}")
        file_rows = chunks.limit(file_rows, config.train_size)
    rows_per_chunk = chunks.chunk_rows(train.features, config.data.chunk_mb, sum(file_rows))
    order = chunks.cut(file_rows, rows_per_chunk)
    if whole:
        return Plan(rows_per_chunk, len(order), order, [], None)
    order = chunks.permute(order, config.seed)
    if test is None and config.data.test_fraction:
        kept, held = chunks.hold_out(order, config.data.test_fraction)
        if not held:
            raise DataError(f"config key 'data.test_fraction' is {config.data.test_fraction}: "
                            f"not one of {chunks.total(order)} rows held out; allowed: a larger "
                            "fraction")
        return Plan(rows_per_chunk, len(order), kept, held, train)
    # A test file is cut by its own size: a small training subset (train_size) must not cut a
    # large test set into thousands of one-row reads.
    held = [] if test is None else chunks.cut(
        test.file_rows, chunks.chunk_rows(test.features, config.data.chunk_mb, test.rows))
    return Plan(rows_per_chunk, len(order), order, held, test)


def check_sizes(n: int, ctx: Context, batch_size: int) -> None:
    if n < ctx.size:
        raise ConfigError(f"{n} examples cannot be shared by {ctx.size} ranks; allowed: at most "
                          f"{n} ranks")
    if chunks.steps_per_epoch(n, ctx.size, batch_size) == 0:
        raise ConfigError(f"config key 'batch_size' is {batch_size}, larger than a shard of "
                          f"{n // ctx.size} examples ({n} over {ctx.size} ranks); allowed: 1 to "
                          f"{n // ctx.size}")


def budget(config: Settings, ctx: Context) -> int:
    """Bytes a shard may take on the device: data.budget_mb, else half its free memory."""
    if config.data.budget_mb:
        return int(config.data.budget_mb * 2**20)
    if ctx.device.type == "cuda":
        return torch.cuda.mem_get_info(ctx.device)[0] // 2
    return host.available_bytes() // 2 // max(1, ctx.local_size)


def decide(config: Settings, ctx: Context, sharing: Sharing, nbytes: int, held: bool) -> bool:
    """Whether the shard is held on the device (True) or streamed; the same on every rank."""
    mode, limit = config.data.memory, budget(config, ctx)
    if mode == "auto":
        hold = sharing.all(nbytes <= limit, "data.fits")
    else:
        hold = mode == "device"
    if held and not hold:
        why = ("data.memory is 'stream'" if mode == "stream" else
               f"a shard of {nbytes / 2**20:,.3f} MiB is over the budget of "
               f"{limit / 2**20:,.3f} MiB")
        raise ConfigError(f"family {config.family!r} with optimizer {config.optimizer!r} trains "
                          f"on the whole shard at once, and {why}; allowed: a shard that fits "
                          "(more ranks, data.budget_mb, data.memory 'device'), or optimizer sgd "
                          "or adam")
    return hold


def stored_shape(config: Settings, source: Source) -> tuple[int, ...]:
    """One example's shape: data.shape, else the stored one (it decides the scale's groups)."""
    shape = config.data.shape or source.shape
    if int(np.prod(shape)) != source.features:
        raise ConfigError(f"config key 'data.shape' is {list(shape)}, {int(np.prod(shape))} "
                          f"values, but the examples have {source.features} features; allowed: "
                          f"a shape of {source.features} values")
    return shape


def served_shape(shape: tuple[int, ...], images: bool) -> tuple[int, ...]:
    """One example as batches give it: (C, H, W) for image models, else flat."""
    if not images:
        return (int(np.prod(shape)),)
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) != 3:
        raise ConfigError(f"family 'cnn' needs images and the examples are {list(shape)}; "
                          f"allowed: data.shape [channels, height, width] of "
                          f"{int(np.prod(shape))} values, e.g. [1, 28, 28]")
    return shape


def announce_copies(ctx: Context, made: list[tuple[str, bool]], cache: Path) -> None:
    """Each host's local rank 0 says how it prepared the gzip files for its host's ranks."""
    if not made or ctx.local_rank != 0:
        return
    fresh = sum(new for _, new in made)
    how = (f"decompressed {fresh} of them" if fresh else "found them decompressed already")
    print(f"hvdl: data: {socket.gethostname()}: local rank 0 prepared {len(made)} gzip file(s) "
          f"({made[0][0]}{', ...' if len(made) > 1 else ''}) for this host's {ctx.local_size} "
          f"rank(s): {how} in {cache} (convert them once with `hvdl data convert` to skip this)",
          flush=True)
