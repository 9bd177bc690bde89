"""Encode a dataset with a trained model: its hidden representation, written in parts by the ranks.

    hvdl encode --checkpoint <run>/stages/sae.pt --out features/            # the training data
    horovodrun -np 4 python -m hvdl.encode --checkpoint C --out DIR --data.path big.parquet
    hvdl encode --checkpoint <a deep_ae run's checkpoint> --out codes/ --layer 2 --format npy

Any family with an encoder (hvdl/families.py: sae, stacked_ae, rbm, dbn, deep_ae) gives the
activations of one hidden layer: `--layer K` (1 = the first), by default the code layer of a
deep autoencoder and the last hidden layer of a stack. Every row of `data.path` (the training
run's, unless `--data.KEY VALUE` options say otherwise) is read in file order with the
checkpoint's normalisation; rank r of N encodes the r-th of N contiguous parts of it and writes
`part-<r>.parquet` (columns f0, f1, ... and `label` with the original label values when the data
has labels) or `part-<r>.npy` with `part-<r>.labels.npy`. Rank 0 writes `manifest.json`: the
parts in order with their rows, the layer, the checkpoint and the data's record. The parts in
name order are the dataset in file order, so the output trains another model as it is:
`--data.path 'DIR/part-*.parquet' --data.label label`. DIR must be new or empty; nothing is
written over. DIR may be s3://bucket/prefix; or `--out postgresql://user@host/db --table NAME`
writes the codes as a new table, each rank inserting its rows in bulk with what identifies their
source rows (the data's `data.key`, else their ctid, or for files their place in file order),
so the features join to the data in SQL. Bad input: one line on rank 0, status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hvdl import dist
from hvdl.cli import overrides_epilog
from hvdl.data.formats import store
from hvdl.errors import ArgumentParser, BadInput, fail
from hvdl.families import load_trained
from hvdl.host import launcher_rank
from hvdl.inference import encoding


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(this command's options, the `--KEY VALUE` config overrides)."""
    parser = ArgumentParser(prog="hvdl encode", description=__doc__.splitlines()[0],
                            epilog=overrides_epilog())
    parser.add_argument("--checkpoint", required=True, type=Path, help="a .pt written by hvdl")
    parser.add_argument("--out", required=True, type=store.path_of,
                        help="a new or empty folder, s3://bucket/prefix, or a database "
                        "(postgresql://user@host/db) with --table")
    parser.add_argument("--table", default="", help="the new table --out's database gets")
    parser.add_argument("--layer", type=int, help="the hidden layer, 1 = the first (default: "
                        "the code layer or the last)")
    parser.add_argument("--format", choices=("parquet", "npy"), default="parquet",
                        help="file format of each rank's part")
    parser.add_argument("--data_dir", "--data-dir", default="", help="MNIST folder")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, rest = parse(sys.argv[1:] if argv is None else argv)
    is_root = launcher_rank() == 0
    try:
        done = encoding(load_trained(args.checkpoint), args.out, args.layer, args.format, rest,
                        args.data_dir, args.table)
    except BadInput as err:
        raise fail(str(err), is_root) from None
    if is_root and args.table:
        print(f"hvdl encode: {done['rows']:,} rows of {done['source']} through layer "
              f"{done['layer']} of {args.checkpoint} into table {args.table} of {args.out} "
              f"({done['parts']} rank(s) inserting)")
    elif is_root:
        print(f"hvdl encode: {done['rows']:,} rows of {done['source']} through layer "
              f"{done['layer']} of {args.checkpoint} into {done['parts']} part(s) in {args.out}; "
              f"train on them with --data.path '{args.out}/part-*.{args.format}'"
              + (" --data.label label" if done["labels"] and args.format == "parquet" else ""))
    dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
