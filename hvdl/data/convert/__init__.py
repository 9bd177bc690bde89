"""`hvdl data inspect` and `hvdl data convert`: look at a dataset, or write it in another format.

    hvdl data inspect data/tables/*.csv --label species --ranks 4
    hvdl data inspect data/mnist --format mnist
    hvdl data convert data/mnist/train-images-idx3-ubyte.gz /tmp/mnist/train.parquet \
        --label data/mnist/train-labels-idx1-ubyte.gz
    hvdl data convert big.csv.gz big.npy --label y          # read in parts from then on

`inspect` prints the format, files, rows, columns and types, the label classes and their counts,
and how the chunk rule (hvdl/data/chunks.py) would cut and deal the data to `--ranks` ranks.
`convert` streams the rows, a chunk at a time, into the format DST's name says (or `--to`),
keeping the stored types; it refuses to write over an existing file unless `--overwrite`, and
leaves nothing behind when it fails. Both run in one process. Bad input: one line, status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from hvdl.data import chunks
from hvdl.data.convert.writers import Layout, label_path, open_writer
from hvdl.data.formats import mnist, open_source, store
from hvdl.data.formats.base import FILE_FORMATS, DataError, Source, Spec
from hvdl.data.formats.files import format_of
from hvdl.data.formats.store import S3Path
from hvdl.data.survey import label_keys, vocabulary
from hvdl.errors import ArgumentParser, BadInput


def parse(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="hvdl data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, what in (("inspect", "describe a dataset and its sharing"),
                       ("convert", "write a dataset in another format, streaming")):
        sub = commands.add_parser(name, help=what)
        sub.add_argument("path", help="a file, folder or glob (mnist: the MNIST folder)")
        if name == "convert":
            sub.add_argument("dst", type=store.path_of, help="the file (or s3://bucket/key) to "
                             "write")
            sub.add_argument("--to", choices=FILE_FORMATS, help="format of DST (default: its "
                             "name's)")
            sub.add_argument("--overwrite", action="store_true", help="replace an existing DST")
            sub.add_argument("--keep-labels", default="", metavar="A,B,...",
                             help="write only the rows with these labels")
        sub.add_argument("--format", default="", help="format of PATH (default: its name's)")
        sub.add_argument("--label", default="", help="label column, key, file or folder level")
        sub.add_argument("--features", default="", help="comma-separated columns or the key")
        sub.add_argument("--table", default="", help="sql: the table (PATH: postgresql://...)")
        sub.add_argument("--query", default="", help="sql: a query, read in parts by --key")
        sub.add_argument("--key", default="", help="sql: an integer column to split by")
        sub.add_argument("--split", default="train", choices=("train", "test"),
                         help="MNIST's split (--format mnist)")
        sub.add_argument("--chunk-mb", type=float, default=4, help="chunk size (data.chunk_mb)")
        if name == "inspect":
            sub.add_argument("--ranks", type=int, default=1, help="ranks to deal the data to")
            sub.add_argument("--batch-size", type=int, default=64, help="per rank")
            sub.add_argument("--test-fraction", type=float, default=0.0,
                             help="share held out for testing (data.test_fraction)")
            sub.add_argument("--seed", type=int, default=42,
                             help="seed of the held-out draw and the chunk order")
    return parser.parse_args(argv)


def open_alone(args: argparse.Namespace) -> Source:
    """The dataset opened in this one process, a CSV's records counted."""
    if args.format == "mnist":
        from hvdl.data.formats.files import decompress, default_cache

        return mnist.open_split(Path(args.path), args.split,
                                lambda p: decompress(p, default_cache()))
    features = tuple(f for f in args.features.split(",") if f)
    source = open_source(Spec(format=args.format, path=args.path, label=args.label,
                              features=features, table=args.table, query=args.query,
                              key=args.key), split_mb=args.chunk_mb)
    source.import_state(source.export_state())
    if source.splits:
        source.set_counts([source.count(i) for i in range(len(source.splits))])
    return source


def file_chunks(source: Source, chunk_mb: float) -> list[chunks.Piece]:
    """The chunks training would cut the source into, in file order."""
    return chunks.cut(source.file_rows,
                      chunks.chunk_rows(source.features, chunk_mb, source.rows))


# --- inspect --------------------------------------------------------------------------------

def class_counts(source: Source, pieces: list[chunks.Piece]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for piece in pieces:
        keys, n = np.unique(label_keys(source.labels(piece)), return_counts=True)
        for k, c in zip(keys.tolist(), n.tolist()):
            counts[k] = counts.get(k, 0) + c
    return counts


def inspect_lines(source: Source, args: argparse.Namespace) -> list[str]:
    listing = source.listing
    size = sum(f.stat().st_size for f in listing if f.is_file())
    lines = [f"format: {source.format}",
             f"files: {len(listing)} ({size / 2**20:,.1f} MB): " +
             ", ".join(str(f) for f in listing[:5]) + (", ..." if len(listing) > 5 else ""),
             f"rows: {source.rows:,}" + ("" if len(source.file_rows) == 1 else
                                          " (" + ", ".join(f"{r:,}" for r in
                                                           source.file_rows[:8]) + ")"),
             f"features: {source.features} per row, stored as {source.dtype}, shape "
             f"{list(source.shape)}", "columns:"]
    columns = source.columns()
    lines += [f"  {name:<24} {kind}" for name, kind in columns[:40]]
    if len(columns) > 40:
        lines.append(f"  ... {len(columns) - 40} more")
    text = [name for name, kind in columns if kind.startswith("text")]
    if text:
        lines.append(f"note: column {text[0]!r} holds text, which cannot be a feature; if it "
                     f"names each row's class, it is the label: --label {text[0]}")
    pieces = file_chunks(source, args.chunk_mb)
    if source.labelled:
        counts = class_counts(source, pieces)
        classes = vocabulary(counts)
        lines.append(f"label: {source.label_name}: {len(classes)} classes")
        lines += [f"  {str(c):<24} {counts[str(c)]:,}" for c in classes[:50]]
    else:
        lines.append("label: none (unlabelled: for the sae, rbm and deep_ae families)")
    return lines + sharing_lines(source, pieces, args)


def sharing_lines(source: Source, pieces: list[chunks.Piece], args: argparse.Namespace) -> list:
    rows = chunks.chunk_rows(source.features, args.chunk_mb, source.rows)
    order = chunks.permute(pieces, args.seed)
    train, test = (chunks.hold_out(order, args.test_fraction) if args.test_fraction
                   else (order, []))
    n = chunks.total(train)
    steps = chunks.steps_per_epoch(n, args.ranks, args.batch_size)
    lines = [f"chunks: {len(pieces)} of up to {rows:,} rows (chunk_mb {args.chunk_mb:g}), "
             f"permuted with seed {args.seed}" +
             (f"; {chunks.total(test):,} rows held out" if test else ""),
             f"dealt to {args.ranks} rank(s): {steps} steps per epoch of {args.batch_size} per "
             f"rank, {n - steps * args.batch_size * args.ranks:,} rows left out each epoch "
             "(a different random handful each time)"]
    if n < args.ranks:
        return lines + [f"  {n} rows cannot be shared by {args.ranks} ranks"]
    for rank in range(args.ranks):
        mine = chunks.deal(train, rank, args.ranks)
        shown = ", ".join(f"{source.name(p.file).name}[{p.start}:{p.stop}]" for p in mine[:4])
        lines.append(f"  rank {rank}: {chunks.total(mine):,} rows in {len(mine)} piece(s): "
                     f"{shown}{', ...' if len(mine) > 4 else ''}")
    return lines


# --- convert --------------------------------------------------------------------------------

def target_format(args: argparse.Namespace) -> str:
    fmt = args.to or format_of(args.dst)
    if fmt not in FILE_FORMATS or fmt == "images":
        raise DataError(f"{args.dst}: cannot tell the format to write from its name; allowed: "
                        "--to npy, idx, hdf5, parquet or csv (or a name ending so)")
    return fmt


def kept(y: np.ndarray | None, keep: set[str]) -> np.ndarray | slice:
    """The rows `--keep-labels` keeps (all of them without it)."""
    if not keep or y is None:
        return slice(None)
    return np.isin(label_keys(y), sorted(keep))


def label_dtype(source: Source, pieces: list[chunks.Piece],
                keep: set[str]) -> tuple[np.dtype | None, int]:
    """The labels' stored type (strings get the width of the longest) and the rows kept: one
    pass over the labels alone."""
    if not source.labelled:
        if keep:
            raise DataError("--keep-labels needs labels; allowed: --label naming them")
        return None, source.rows
    kinds = [np.asarray(source.labels(p)) for p in pieces]
    rows = sum(len(k[kept(k, keep)]) for k in kinds)
    if all(k.dtype.kind in "biuf" for k in kinds):
        return np.result_type(*[k.dtype for k in kinds]), rows
    width = max(max((len(str(v)) for v in k), default=1) for k in kinds)
    return np.dtype(f"<U{width}"), rows


def convert(source: Source, args: argparse.Namespace) -> tuple[list[Path], int]:
    fmt = target_format(args)  # written in blocks of chunk_mb (a Parquet row group each)
    pieces = chunks.cut(source.file_rows, chunks.block_rows(source.features, args.chunk_mb))
    keep = {k.strip() for k in args.keep_labels.split(",") if k.strip()}
    labels, rows = label_dtype(source, pieces, keep)
    layout = Layout(rows=rows, shape=tuple(source.shape), dtype=np.dtype(source.dtype),
                    names=source.feature_names(), label_dtype=labels)
    targets = [args.dst] + ([label_path(args.dst)] if layout.label_dtype is not None
                            and fmt in ("npy", "idx") else [])
    for target in targets:
        if target.exists() and not args.overwrite:
            raise DataError(f"{target} exists; allowed: a new path, or --overwrite to replace it")
        if target.resolve() in [f.resolve() for f in source.listing]:
            raise DataError(f"{target} is one of the files being read; allowed: another path")
    if not isinstance(args.dst, S3Path):
        args.dst.parent.mkdir(parents=True, exist_ok=True)
    writer = open_writer(args.dst, fmt, layout)
    try:
        for piece in pieces:
            x, y = source.read(piece)
            rows = kept(y, keep)
            writer.write(x[rows].astype(layout.dtype, copy=False), None if y is None else y[rows])
    except BaseException:
        writer.abort()
        raise
    return writer.commit(), layout.rows


def training_options(fmt: str, written: list[Path], labelled: bool) -> str:
    """The `--data.*` options that train on what `convert` wrote."""
    options = f"--data.path {written[0]}" + (" --data.features features" if fmt == "hdf5"
                                             else "")
    if labelled:
        label = {"npy": written[-1], "idx": written[-1], "hdf5": "labels"}.get(fmt, "label")
        options += f" --data.label {label}"
    return options


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        source = open_alone(args)
        if args.command == "inspect":
            print("\n".join(inspect_lines(source, args)))
        else:
            written, rows = convert(source, args)
            fmt = target_format(args)
            print(f"hvdl data: wrote {rows:,} rows to {', '.join(map(str, written))}; "
                  f"train on it with {training_options(fmt, written, source.labelled)}")
        source.close()
    except BadInput as err:
        print(f"hvdl data: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
