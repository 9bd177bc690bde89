"""One way to give a rank its shard of any dataset: `load(config, ctx, run)`.

    data = load(config, ctx, run, labels=True, images=True)    # the cnn family's call
    for x, y in data.train.batches(epoch): ...                  # (B, 1, 28, 28), (B,)

In order, on every rank: open the split(s) (`data.format`, `data.path`, `data.test_path`;
MNIST and natural-image patches are datasets like any other); count a CSV's records (the ranks
share the splits); cut, permute, hold out and deal the chunks (hvdl/data/chunks.py); survey this
rank's pieces: check them, count labels, gather moments (hvdl/data/prepare.py); agree on the
class vocabulary and the normalisation over all ranks; hold the shard on the device if it fits
`data.budget_mb`, else stream it (`data.memory`, hvdl/data/stream.py). A bad input found by any
rank is raised on every rank, so rank 0 prints it and all exit together. The run folder gets
`data.json`: paths, format, rows, columns, a fingerprint of the files, the classes, the
normalisation, the chunking and every rank's pieces; checkpoints carry the classes and the
normalisation, so `given` (a checkpoint's record) reads new data exactly as training did.

Under elastic training no collective may run outside Horovod's elastic loop, so each rank then
surveys all of the training data itself (and reaches the same figures); the dealing follows the
world size as usual.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from hvdl import dist
from hvdl.config import Config, ConfigError
from hvdl.data import chunks, mnist
from hvdl.data.chunks import Order, Piece
from hvdl.data.patches import PatchSource
from hvdl.data.prepare import Classes, Scale, Survey, check, merge, vocabulary
from hvdl.data.shard import DeviceShard, Shard
from hvdl.data.source import (DataError, Source, Spec, decompress, decompressed, default_cache,
                              fingerprint, open_source)
from hvdl.data.stream import StreamShard
from hvdl.dist import Context
from hvdl.errors import BadInput

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

    @property
    def picture(self) -> tuple[int, int] | None:
        """(height, width) to draw a first-layer filter in; None when examples are not images."""
        found = self.info.get("picture")
        return tuple(found) if found else None


class Sharing:
    """How the ranks share the work: collectives, or (elastic training) each rank alone."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.collective = ctx.size > 1 and ctx.controller != "elastic"

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


# --- opening --------------------------------------------------------------------------------

def data_format(config: Config) -> str:
    """data.format, or mnist when neither a format nor a path is given (inferred otherwise)."""
    return config.data.format or ("" if config.data.path else "mnist")


def open_splits(config: Config, local: Callable[[Path], Path]) -> tuple[Source, Source | None]:
    """(training source, test source or None) as the config describes them."""
    spec, fmt = config.data, data_format(config)
    if fmt == "mnist":
        folder = mnist.resolve_data_dir(spec.path or config.data_dir)
        return mnist.open_split(folder, "train", local), mnist.open_split(folder, "test", local)
    if fmt == "patches":
        p = config.patches
        return PatchSource(p.source, count=p.count, size=p.size, seed=config.seed,
                           zca_epsilon=p.zca_epsilon if p.zca else None), None
    files = Spec(format=fmt, path=spec.path, label=spec.label, features=spec.features)
    train = open_source(files, local=local, split_mb=spec.chunk_mb)
    test = None
    if spec.test_path:
        test = open_source(dataclasses.replace(files, path=spec.test_path,
                                               label=spec.test_label or spec.label,
                                               format=fmt or train.format),
                           local=local, split_mb=spec.chunk_mb)
        if test.features != train.features:
            raise DataError(f"data.test_path {spec.test_path} has {test.features} features per "
                            f"row, the training data {train.features}; allowed: the same layout")
    return train, test


def node_copies(ctx: Context, sharing: Sharing, folder: Path,
                made: list[str]) -> Callable[[Path], Path]:
    """A gzip file's decompressed copy, made once per node by its local rank 0."""
    def local(path: Path) -> Path:
        order = dist.local_root_first(ctx) if sharing.collective else contextlib.nullcontext()
        with order:
            existed = decompressed(path, folder).is_file()
            out = decompress(path, folder)
        made.append(f"{path.name} ({'decompressed' if not existed else 'found'})")
        return out
    return local


def count_records(source: Source, sharing: Sharing) -> None:
    """A CSV's records per split, each split counted by one rank; a no-op for other formats."""
    if not hasattr(source, "splits"):
        return
    ctx = sharing.ctx
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


def plan(config: Config, train: Source, test: Source | None) -> Plan:
    file_rows = train.file_rows
    if config.train_size:
        if config.train_size > train.rows:
            raise ConfigError(f"config key 'train_size' is {config.train_size}, the training "
                              f"set has {train.rows}; allowed: 0 (all) to {train.rows}")
        file_rows = chunks.limit(file_rows, config.train_size)
    rows_per_chunk = chunks.chunk_rows(train.features, config.data.chunk_mb, sum(file_rows))
    order = chunks.permute(chunks.cut(file_rows, rows_per_chunk), config.seed)
    if test is None and config.data.test_fraction:
        kept, held = chunks.hold_out(order, config.data.test_fraction)
        if not held:
            raise DataError(f"config key 'data.test_fraction' is {config.data.test_fraction}: "
                            f"not one of {chunks.total(order)} rows held out; allowed: a larger "
                            "fraction")
        return Plan(rows_per_chunk, len(order), kept, held, train)
    held = chunks.cut(test.file_rows, rows_per_chunk) if test is not None else []
    return Plan(rows_per_chunk, len(order), order, held, test)


def check_sizes(n: int, ctx: Context, batch_size: int) -> None:
    if n < ctx.size:
        raise ConfigError(f"{n} examples cannot be shared by {ctx.size} ranks; allowed: at most "
                          f"{n} ranks")
    if chunks.steps_per_epoch(n, ctx.size, batch_size) == 0:
        raise ConfigError(f"config key 'batch_size' is {batch_size}, larger than a shard of "
                          f"{n // ctx.size} examples ({n} over {ctx.size} ranks); allowed: 1 to "
                          f"{n // ctx.size}")


def stored_shape(config: Config, source: Source) -> tuple[int, ...]:
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


# --- reading ----------------------------------------------------------------------------------

def survey(source: Source, pieces: list[Piece], shape: tuple[int, ...], *, moments: bool,
           into: torch.Tensor | None = None) -> tuple[Survey, list[np.ndarray | None]]:
    """Check and count the pieces; copy them into `into` (rows, features) when given.

    The pieces are read in file order and their findings merged in the pieces' own order, so the
    figures do not depend on how a format groups its rows."""
    parts, names = {}, []
    for offset, piece in chunks.in_file_order(pieces):
        raw, y = source.read(piece)
        x = raw.astype(np.float32, copy=False)

        def where(row: int, col: int, piece: Piece = piece) -> str:
            names[:] = names or source.feature_names()
            return f"{source.position(piece, row)} column {names[col]!r}"

        part = Survey()
        part.add(x, y, shape=shape, moments=moments, where=where)
        parts[offset] = (part, y)
        if into is not None:
            into[offset:offset + len(x)] = torch.from_numpy(x).to(into.device)
    found = merge([parts[o][0] for o in sorted(parts)])
    return found, [parts[o][1] for o in sorted(parts)]


def class_index(classes: Classes, source: Source, pieces: list[Piece],
                labels: list[np.ndarray]) -> np.ndarray:
    parts = [classes.index(y, lambda row, p=p: source.position(p, row))
             for p, y in zip(pieces, labels)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def budget(config: Config, ctx: Context) -> int:
    """Bytes a shard may take on the device: data.budget_mb, else half its free memory."""
    if config.data.budget_mb:
        return int(config.data.budget_mb * 2**20)
    if ctx.device.type == "cuda":
        return torch.cuda.mem_get_info(ctx.device)[0] // 2
    import psutil

    return psutil.virtual_memory().available // 2 // max(1, ctx.local_size)


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def decide(config: Config, ctx: Context, sharing: Sharing, nbytes: int, held: bool) -> bool:
    """Whether the shard is held on the device (True) or streamed; the same on every rank."""
    mode, limit = config.data.memory, budget(config, ctx)
    if mode == "auto":
        hold = sharing.all(nbytes <= limit, "data.fits")
    else:
        hold = mode == "device"
    if held and not hold:
        why = ("data.memory is 'stream'" if mode == "stream" else
               f"a shard of {nbytes / 2**30:.2f} GB is over the budget of {limit / 2**30:.2f} GB")
        raise ConfigError(f"family {config.family!r} with optimizer {config.optimizer!r} trains "
                          f"on the whole shard at once, and {why}; allowed: a shard that fits "
                          "(more ranks, data.budget_mb, data.memory 'device'), or optimizer sgd "
                          "or adam")
    return hold


def decoder(source: Source, scale: Scale, classes: Classes | None) -> Callable:
    """A piece's rows as the shards serve them: float32, scaled; labels as class indices."""
    def decode(piece: Piece) -> tuple[np.ndarray, np.ndarray | None]:
        raw, y = source.read(piece)
        x = scale.apply(raw.astype(np.float32, copy=False))
        if classes is None or y is None:
            return x, None
        return x, classes.index(y, lambda row: source.position(piece, row))
    return decode


def build(source: Source, pieces: list[Piece], *, hold: bool, x: torch.Tensor | None,
          raw_labels: list, scale: Scale, classes: Classes | None, order: Order, batch_size: int,
          epoch_rows: int, shape: tuple[int, ...], ctx: Context) -> Shard:
    """The shard of `pieces`: `x` (read, unscaled) made a DeviceShard, or a StreamShard."""
    labelled = classes is not None and source.labelled
    if not hold:
        return StreamShard(pieces, decoder(source, scale, classes if labelled else None),
                           order=order, batch_size=batch_size, epoch_rows=epoch_rows,
                           features=source.features, shape=shape, device=ctx.device,
                           labels=labelled)
    scale.apply_(x)
    y = None
    if labelled:
        y = torch.from_numpy(class_index(classes, source, pieces, raw_labels)).to(ctx.device)
    return DeviceShard(x.reshape(len(x), *shape), y, batch_size=batch_size,
                       epoch_rows=epoch_rows, order=order)


def read_split(source: Source, mine: list[Piece], every: list[Piece], sharing: Sharing, *,
               shape: tuple[int, ...], moments: bool, hold: bool, device: torch.device,
               name: str) -> tuple[Survey, torch.Tensor | None, list]:
    """Survey the split over all ranks; this rank's rows read into memory when held."""
    alone = not sharing.collective and sharing.ctx.size > 1  # elastic: survey everything here
    rows = chunks.total(mine)
    x = torch.empty((rows, source.features), dtype=torch.float32, device=device) if hold \
        else None

    def work() -> tuple[Survey, list]:
        found, labels = survey(source, every if alone else mine, shape, moments=moments,
                               into=None if alone else x)
        if alone and hold:
            _, labels = survey(source, mine, shape, moments=False, into=x)
        return found, labels

    found, labels = sharing.agree(work, f"data.{name}")
    return merge(sharing.gather(found, f"data.{name}.survey")), x, labels if hold else []


def load(config: Config, ctx: Context, run: Any = None, *, labels: bool = False,
         images: bool = False, held: bool = False, given: dict[str, Any] | None = None,
         splits: tuple[str, ...] = ("train", "test")) -> Data:
    """This rank's shards of the configured dataset (see the module docstring).

    labels: the family needs labels; images: examples as (C, H, W); held: the family needs the
    whole shard in memory (full-batch training); given: a checkpoint's data record, whose
    classes and normalisation are used instead of new ones; splits: which shards to build.
    """
    started, rss_before = time.perf_counter(), rss_mb()
    sharing, spec = Sharing(ctx), config.data
    cache, made = Path(spec.cache_dir) if spec.cache_dir else default_cache(), []
    train_src, test_src = sharing.agree(
        lambda: open_splits(config, node_copies(ctx, sharing, cache, made)), "data.open")
    announce_copies(ctx, made, cache)
    for source in (train_src, test_src):
        if source is not None:
            count_records(source, sharing)
    if labels and not train_src.labelled:
        raise DataError(f"family {config.family!r} needs labels and the data has none; allowed: "
                        "data.label naming the label column, HDF5 key, label file or image "
                        "folder level")
    p = sharing.agree(lambda: plan(config, train_src, test_src), "data.plan")
    layout = stored_shape(config, train_src)
    shape = served_shape(layout, images)
    n_train, n_test = chunks.total(p.train), chunks.total(p.test)
    if "train" in splits:
        check_sizes(n_train, ctx, config.batch_size)
    mine = chunks.deal(p.train, ctx.rank, ctx.size) if "train" in splits else []
    mine_test = chunks.deal(p.test, ctx.rank, ctx.size) if "test" in splits and n_test else []
    if isinstance(train_src, PatchSource):  # its normalisation spans every drawn patch
        every = mine + mine_test if sharing.collective else p.train + p.test
        train_src.prepare(every, sharing.reduce_sum)
    features = train_src.features
    hold = decide(config, ctx, sharing, chunks.total(mine) * features * 4, held)
    hold_test = hold and decide(config, ctx, sharing, chunks.total(mine_test) * features * 4,
                                False)
    moments = spec.scale in ("standardize", "minmax") and given is None
    found, x, raw = read_split(train_src, mine, p.train, sharing, shape=layout, moments=moments,
                               hold=hold, device=ctx.device, name="train")
    if "train" in splits:
        check(found, "training")
    classes = None
    if given and given.get("classes") is not None:
        classes = Classes(tuple(given["classes"]))
    elif train_src.labelled:
        classes = Classes(tuple(vocabulary(found.labels)))
    scale = Scale.from_dict(given["scale"]) if given else Scale.fit(spec.scale, found.moments,
                                                                   layout)
    window = chunks.window_rows(features, spec.buffer_mb)
    train = test = None
    if "train" in splits:
        order = Order(tuple(q.rows for q in mine), window, config.seed, ctx.rank)
        train = sharing.agree(lambda: build(
            train_src, mine, hold=hold, x=x, raw_labels=raw, scale=scale, classes=classes,
            order=order, batch_size=config.batch_size, epoch_rows=n_train // ctx.size,
            shape=shape, ctx=ctx), "data.train.build")
    test_found = None
    if mine_test or (n_test and "test" in splits):
        test_found, tx, traw = read_split(p.test_source, mine_test, p.test, sharing, shape=layout,
                                          moments=False, hold=hold_test, device=ctx.device,
                                          name="test")
        check(test_found, "test")
        order = Order(tuple(q.rows for q in mine_test), window, config.seed, ctx.rank,
                      shuffle=False)
        test = sharing.agree(lambda: build(
            p.test_source, mine_test, hold=hold_test, x=tx, raw_labels=traw, scale=scale,
            classes=classes, order=order, batch_size=EVAL_BATCH,
            epoch_rows=chunks.total(mine_test), shape=shape, ctx=ctx), "data.test.build")
    info = record(config, train_src, p, shape=shape, layout=layout, classes=classes, scale=scale,
                  found=found, test_found=test_found, hold=hold, budget_bytes=budget(config, ctx),
                  pieces=sharing.gather([[q.file, q.start, q.stop] for q in mine], "data.pieces"),
                  memory=sharing.gather([rss_before, rss_mb()], "data.rss"),
                  seconds=time.perf_counter() - started)
    data = Data(train, test, features, shape, classes.names if classes else None, info)
    if run is not None:
        run.record_data(info)
        run.print(startup_line(data, n_train, n_test, ctx, hold))
    return data


def announce_copies(ctx: Context, made: list[str], cache: Path) -> None:
    """Each host's local rank 0 says what it decompressed for its host (gzip files)."""
    if made and ctx.local_rank == 0:
        print(f"hvdl: data: {socket.gethostname()}: local rank 0 prepared {', '.join(made)} in "
              f"{cache} for the {ctx.local_size} rank(s) of this host; `hvdl data convert` "
              "gzip files once to read them in parts", flush=True)


def record(config: Config, source: Source, p: Plan, *, shape: tuple[int, ...],
           layout: tuple[int, ...], classes: Classes | None, scale: Scale, found: Survey, test_found: Survey | None,
           hold: bool, budget_bytes: int, pieces: list, memory: list,
           seconds: float) -> dict[str, Any]:
    """What data.json records of the dataset and of how it was shared out."""
    spec = config.data
    listing = source.listing

    def counts(s: Survey | None) -> list[int] | None:
        if s is None or classes is None:
            return None
        return [s.labels.get(str(name), 0) for name in classes.names]

    return {
        "format": data_format(config) or source.format, "path": spec.path,
        "test": test_text(config, p),
        "files": [str(f) for f in listing[:1000]], "file_count": len(listing),
        "fingerprint": fingerprint(listing) if listing[0].exists() else None,
        "rows": {"train": chunks.total(p.train), "test": chunks.total(p.test)},
        "features": source.features, "shape": list(shape), "stored_shape": list(layout),
        "picture": picture(source, layout),
        "columns": source.columns()[:1000],
        "label": source.label_name, "classes": list(classes.names) if classes else None,
        "class_counts": {"train": counts(found), "test": counts(test_found)},
        "scale": scale.to_dict(), "chunk_rows": p.chunk_rows, "chunks": p.chunks,
        "memory": "device" if hold else "stream", "budget_mb": budget_bytes / 2**20,
        "buffer_mb": spec.buffer_mb, "load_seconds": seconds,
        "rss_mb": [{"rank": r, "before": m[0], "after": m[1]} for r, m in enumerate(memory)],
        "shards": [{"rank": r, "rows": sum(b - a for _, a, b in mine), "pieces": mine}
                   for r, mine in enumerate(pieces)],
    }


def picture(source: Source, layout: tuple[int, ...]) -> list[int] | None:
    """One gray example's (height, width): an (H, W) or (1, H, W) layout, or a patch."""
    if isinstance(source, PatchSource):
        return [source.size, source.size]
    if len(layout) == 3 and layout[0] == 1:
        layout = layout[1:]
    return list(layout) if len(layout) == 2 else None


def test_text(config: Config, p: Plan) -> str | None:
    """Where the test split comes from, in words."""
    if p.test_source is None or not p.test:
        return None
    if config.data.test_fraction:
        return (f"{config.data.test_fraction} of the rows, held out by the chunk rule from seed "
                f"{config.seed}")
    return ", ".join(str(f) for f in p.test_source.listing[:10])


def startup_line(data: Data, n_train: int, n_test: int, ctx: Context, hold: bool) -> str:
    """The line that says what is trained on and how it is held."""
    info = data.info
    classes = f", {len(data.classes)} classes" if data.classes else ", unlabelled"
    files = f"{info['file_count']} file{'s' if info['file_count'] > 1 else ''}"
    shard = n_train // ctx.size * data.features * 4
    how = (f"held in memory on {ctx.device}" if hold else
           f"streamed through a {info['buffer_mb']} MB buffer")
    return (f"hvdl: data: {info['format']} {info['path'] or '(bundled)'} ({files}): "
            f"{n_train:,} training rows × {data.features} features{classes}, {n_test:,} test "
            f"rows; chunks of {info['chunk_rows']:,} rows; shard {n_train // ctx.size:,} rows "
            f"({shard / 2**20:,.1f} MB) per rank, budget {info['budget_mb']:,.0f} MB: {how}; "
            f"read in {info['load_seconds']:.1f} s")


def fit_layers(config: Config, data: Data) -> Config:
    """`config` with layers' 0s taken from the data (inputs, and a classifier's classes), the
    other counts checked against it."""
    from hvdl.config_rules import CLASSIFIER_FAMILIES

    layers = list(config.layers)
    if not layers:
        return config
    if layers[0] == 0:
        layers[0] = data.features
    elif layers[0] != data.features:
        raise ConfigError(f"config key 'layers' starts with {layers[0]} inputs, the data has "
                          f"{data.features} features; allowed: {data.features}, or 0 to take it "
                          "from the data")
    if config.family in CLASSIFIER_FAMILIES:
        n = len(data.classes or ())
        if layers[-1] == 0:
            layers[-1] = n
        elif layers[-1] != n:
            raise ConfigError(f"config key 'layers' ends with {layers[-1]} classes, the data has "
                              f"{n}; allowed: {n}, or 0 to take it from the data")
    return dataclasses.replace(config, layers=tuple(layers))
