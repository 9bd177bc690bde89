"""One way to give a rank its shard of any dataset: `load(Settings.of(config), ctx)`.

    data = load(Settings.of(config), ctx, labels=True, images=True)   # the cnn family's call
    run.record_data(data.info, startup_line(data.info, ctx))            # data.json, one line
    for x, y in data.train.batches(epoch): ...                          # (B, 1, 28, 28), (B,)

In order, on every rank: open the split(s) (`data.format`, `data.path`, `data.test_path`;
MNIST and natural-image patches are datasets like any other); count a CSV's records (the ranks
share the splits); cut, permute, hold out and deal the chunks (hvdl/data/chunks.py); survey this
rank's pieces: check them, count labels, gather moments (hvdl/data/survey.py); agree on the
class vocabulary and the normalisation over all ranks; hold the shard on the device if it fits
`data.budget_mb`, else stream it (`data.memory`, hvdl/data/stream.py). A bad input found by any
rank is raised on every rank, so rank 0 prints it and all exit together. `Data.info` is the
record the caller writes to the run folder's `data.json`: paths, format, rows, columns, a
fingerprint of the files, the classes, the normalisation, the chunking and every rank's pieces;
checkpoints carry the classes and the normalisation, so `given` (a checkpoint's record) reads new
data exactly as training did.

Under elastic training no collective may run outside Horovod's elastic loop, so each rank then
surveys all of the training data itself (and reaches the same figures); the dealing follows the
world size as usual. Opening and planning are in hvdl/data/plan.py, the record in
hvdl/data/record.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from hvdl import host
from hvdl.data import chunks, formats
from hvdl.data.chunks import Order, Piece
from hvdl.data.formats.base import DataError, Source
from hvdl.data.formats.files import default_cache
from hvdl.data.plan import (
    Plan,
    Sharing,
    announce_copies,
    budget,
    check_sizes,
    count_records,
    decide,
    node_copies,
    plan,
    served_shape,
    stored_shape,
)
from hvdl.data.record import record
from hvdl.data.settings import Settings
from hvdl.data.shard import DeviceShard, Shard, Shards
from hvdl.data.stream import StreamShard
from hvdl.data.survey import (
    Classes,
    Scale,
    Survey,
    check,
    class_index,
    decoder,
    merge,
    survey,
    vocabulary,
)
from hvdl.dist import Context

EVAL_BATCH = 1000  # rows per evaluation batch


@dataclass
class Data:
    """A rank's shards of the training and test splits, and what the run records of them."""

    train: Shard | None
    test: Shard | None
    features: int
    shape: tuple[int, ...]  # one example as the shards serve it
    classes: tuple[Any, ...] | None  # the label vocabulary, None when unlabelled
    info: dict[str, Any]
    reload: Callable[[Context], tuple[Shard, Shard | None]] | None = None  # the same, dealt again
    dealt: tuple[int, int] | None = None  # (rank, world size) the shards were dealt for
    source: Source | None = None  # the training split's reader, open (its rows' ids)

    def shards(self) -> Shards:
        """The training and test shards, dealt again on a new world (elastic training)."""
        return Shards(self.train, self.test, self.reload, self.dealt)

    @property
    def picture(self) -> tuple[int, int] | None:
        """(height, width) to draw a first-layer filter in; None when examples are not images."""
        found = self.info.get("picture")
        return tuple(found) if found else None


def build(source: Source, pieces: list[Piece], *, hold: bool, x: torch.Tensor | None,
          raw_labels: list, scale: Scale, classes: Classes | None, order: Order, batch_size: int,
          epoch_rows: int, shape: tuple[int, ...], ctx: Context) -> Shard:
    """The shard of `pieces`: `x` (read, unscaled) made a DeviceShard, or a StreamShard."""
    labelled = classes is not None and source.labelled
    if not hold:
        return StreamShard(pieces, decoder(source, classes if labelled else None),
                           advise=source.advise, scale=scale.apply_, order=order,
                           batch_size=batch_size, epoch_rows=epoch_rows,
                           features=source.features, shape=shape, device=ctx.device,
                           labels=labelled)
    scale.apply_(x)
    y = None
    if labelled:
        y = torch.from_numpy(class_index(classes, source, pieces, raw_labels)).to(ctx.device)
    return DeviceShard(x.reshape(len(x), *shape), y, batch_size=batch_size,
                       epoch_rows=epoch_rows, order=order)


def read_split(split: Split, sharing: Sharing, *, shape: tuple[int, ...], moments: bool,
               name: str) -> tuple[Survey, torch.Tensor | None, list]:
    """The split surveyed over all ranks; this rank's rows (unscaled) and raw labels when held."""
    alone = not sharing.collective and sharing.ctx.size > 1  # elastic: survey everything here
    source, device = split.source, sharing.ctx.device
    x = None
    if split.hold:
        x = torch.empty((chunks.total(split.mine), source.features), dtype=torch.float32,
                        device=device)

    def work() -> tuple[Survey, list]:
        found, labels = survey(source, split.every if alone else split.mine, shape,
                               moments=moments, into=None if alone else x)
        if alone and split.hold:
            _, labels = survey(source, split.mine, shape, moments=False, into=x)
        return found, labels

    found, labels = sharing.agree(work, f"data.{name}")
    return merge(sharing.gather(found, f"data.{name}.survey")), x, labels if split.hold else []


@dataclass
class Split:
    """One split as this rank sees it before its shard is built."""

    source: Source
    mine: list[Piece]  # this rank's pieces
    every: list[Piece]  # every rank's
    hold: bool  # held on the device, else streamed


def open_data(config: Settings, ctx: Context, sharing: Sharing, labels: bool,
              whole: bool) -> tuple[Source, Plan]:
    """The training source and the plan of who reads what (the test source is in the plan)."""
    spec = config.data
    cache, made = Path(spec.cache_dir) if spec.cache_dir else default_cache(), []
    train, test = sharing.agree(
        lambda: formats.open_splits(config, node_copies(ctx, sharing, cache, made)), "data.open")
    announce_copies(ctx, made, cache)
    for source in (train, test):
        if source is not None:
            count_records(source, sharing)
    if labels and not train.labelled:
        raise DataError(f"family {config.family!r} needs labels and the data has none; allowed: "
                        "data.label naming the label column, HDF5 key, label file or image "
                        "folder level")
    return train, sharing.agree(lambda: plan(config, train, test, whole), "data.plan")


def split_shard(split: Split, found: tuple[Survey, torch.Tensor | None, list], sharing: Sharing,
                *, scale: Scale, classes: Classes | None, order: Order, batch_size: int,
                epoch_rows: int, shape: tuple[int, ...]) -> Shard:
    _, x, raw = found
    return sharing.agree(lambda: build(
        split.source, split.mine, hold=split.hold, x=x, raw_labels=raw, scale=scale,
        classes=classes, order=order, batch_size=batch_size, epoch_rows=epoch_rows,
        shape=shape, ctx=sharing.ctx), "data.build")


@dataclass(frozen=True)
class Request:
    """Which shards `load` builds and how (its `held` and `splits`)."""

    held: bool = False
    splits: tuple[str, ...] = ("train", "test")

    @property
    def whole(self) -> bool:
        return "all" in self.splits

    def wants(self, split: str) -> bool:
        return split in self.splits or (split == "train" and self.whole)


def load(config: Settings, ctx: Context, *, labels: bool = False, images: bool = False,
         held: bool = False, given: dict[str, Any] | None = None,
         splits: tuple[str, ...] = ("train", "test")) -> Data:
    """This rank's shards of the configured dataset (see the module docstring).

    labels: the family needs labels; images: examples as (C, H, W); held: the family needs the
    whole shard in memory (full-batch training); given: a checkpoint's data record, whose
    classes and normalisation are used instead of new ones; splits: which shards to build,
    "train" and "test", or "all": every row of data.path in file order, nothing held out, as
    the training shard in storage order (what `hvdl encode` reads). `config`: a run's data
    settings (hvdl/data/settings.py); the caller logs the returned `Data.info` (its one line:
    hvdl/data/record.py's `startup_line`). Over 40 lines by this docstring alone: the body is
    the steps in order, each a function below.
    """
    started, rss_before = time.perf_counter(), host.rss_mb()
    want, sharing = Request(held, splits), Sharing(ctx)
    source, p = open_data(config, ctx, sharing, labels, want.whole)
    layout = stored_shape(config, source)
    train, test = deal(config, sharing, source, p, want)
    found = read_split(train, sharing, shape=layout, moments=config.data.scale in (
        "standardize", "minmax") and given is None, name="train")
    if want.wants("train"):
        check(found[0], "training")
    classes, scale = agree(config, source, found[0], layout, given)
    built = dict(scale=scale, classes=classes, shape=served_shape(layout, images))
    train_shard = test_shard = test_found = None
    if want.wants("train"):
        train_shard = train_split_shard(config, sharing, train, found, built, p, want.whole)
    if test.mine:
        test_shard, test_found = test_split_shard(config, sharing, test, layout, built)
    info = record(config, source, p, shape=built["shape"], layout=layout, classes=classes,
                  scale=scale, found=found[0], test_found=test_found,
                  span=scale.span(found[0], layout),
                  hold=train.hold, budget_bytes=budget(config, ctx),
                  pieces=sharing.gather([[q.file, q.start, q.stop] for q in train.mine],
                                        "data.pieces"),
                  memory=sharing.gather([rss_before, host.rss_mb()], "data.rss"),
                  seconds=time.perf_counter() - started)

    def reload(new: Context) -> tuple[Shard, Shard | None]:
        again = load(config, new, labels=labels, images=images, held=held, given=info,
                     splits=splits)
        return again.train, again.test

    return Data(train_shard, test_shard, source.features, built["shape"],
                classes.names if classes else None, info, reload, (ctx.rank, ctx.size), source)


def test_split_shard(config: Settings, sharing: Sharing, test: Split, layout: tuple[int, ...],
                     built: dict[str, Any]) -> tuple[Shard, Survey]:
    """The test shard, every row once in storage order, and its checked survey."""
    found = read_split(test, sharing, shape=layout, moments=False, name="test")
    check(found[0], "test")
    order = Order(tuple(q.rows for q in test.mine),
                  chunks.window_rows(test.source.features, config.data.buffer_mb), config.seed,
                  sharing.ctx.rank, shuffle=False)
    shard = split_shard(test, found, sharing, **built, batch_size=EVAL_BATCH, order=order,
                        epoch_rows=chunks.total(test.mine))
    return shard, found[0]


def deal(config: Settings, sharing: Sharing, source: Source, p: Plan,
         want: Request) -> tuple[Split, Split]:
    """This rank's pieces of each split, whether each is held or streamed; the source made
    ready over every rank's pieces (patches fit their normalisation)."""
    ctx = sharing.ctx
    if want.wants("train") and not want.whole:
        check_sizes(chunks.total(p.train), ctx, config.batch_size)
    mine = chunks.deal(p.train, ctx.rank, ctx.size) if want.wants("train") else []
    mine_test = chunks.deal(p.test, ctx.rank, ctx.size) if want.wants("test") and p.test else []
    every = (chunks.deal(p.train, ctx.rank, ctx.size) + chunks.deal(p.test, ctx.rank, ctx.size)
             if sharing.collective else p.train + p.test)
    source.prepare(every, sharing.reduce_sum)  # patches: a normalisation over every one drawn
    hold = decide(config, ctx, sharing, chunks.total(mine) * source.features * 4, want.held)
    test_hold = hold and decide(config, ctx, sharing,
                                chunks.total(mine_test) * source.features * 4, False)
    return (Split(source, mine, p.train, hold),
            Split(p.test_source, mine_test, p.test, test_hold))


def agree(config: Settings, source: Source, found: Survey, layout: tuple[int, ...],
          given: dict[str, Any] | None) -> tuple[Classes | None, Scale]:
    """The class vocabulary and the normalisation: a checkpoint's (`given`), else the whole
    training set's, which every rank has from the merged survey."""
    classes = None
    if given and given.get("classes") is not None:
        classes = Classes(tuple(given["classes"]))
    elif source.labelled:
        classes = Classes(tuple(vocabulary(found.labels)))
    if given:
        return classes, Scale.from_dict(given["scale"])
    span = found.span()
    if config.data.scale == "unit" and span is not None and span[1] <= 1:
        raise DataError(f"data.scale is unit (values / 255, for 0-255 pixels), but the training "
                        f"values already lie in [{span[0]:.4g}, {span[1]:.4g}]; allowed: "
                        "--data.scale none for data already in [0, 1] (or standardize, minmax)")
    return classes, Scale.fit(config.data.scale, found.moments, layout)


def train_split_shard(config: Settings, sharing: Sharing, train: Split,
                      found: tuple[Survey, torch.Tensor | None, list], built: dict[str, Any],
                      p: Plan, whole: bool) -> Shard:
    """The training shard: batches in the chunk rule's order, or (`whole`) every row in
    storage order in evaluation batches."""
    ctx = sharing.ctx
    order = Order(tuple(q.rows for q in train.mine),
                  chunks.window_rows(train.source.features, config.data.buffer_mb), config.seed,
                  ctx.rank, shuffle=not whole)
    return split_shard(train, found, sharing, **built,
                       batch_size=EVAL_BATCH if whole else config.batch_size, order=order,
                       epoch_rows=chunks.total(p.train) // ctx.size)
