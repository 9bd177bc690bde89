"""Evaluate a trained model on its test split, data-parallel; the figures equal one process's.

    hvdl eval --checkpoint results/runs/<run>/checkpoints/step-000001404.pt
    horovodrun -np 2 python -m hvdl.evaluate --checkpoint <run>/stages/finetune.pt --out r.json
    hvdl eval --checkpoint C --data.test_path new.csv --data.label y    # other data, same layout

Every family (hvdl/families.py): a classifier (cnn, stacked_ae, dbn) gives accuracy, per-class
precision, recall and F1 and the confusion matrix; an autoencoder or RBM (sae, rbm, deep_ae)
gives the average squared reconstruction error per example, and the RBM its mean free energy.
The test split is the training run's (`data.test_path`, `data.test_fraction`, MNIST's t10k
files) unless `--data.KEY VALUE` options say otherwise; it is read with the classes and the
normalisation the checkpoint carries. `--out` writes the whole report as JSON. Bad input: one
line on rank 0, status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hvdl import dist
from hvdl.cli import overrides_epilog
from hvdl.errors import ArgumentParser, BadInput, fail
from hvdl.families import load_trained
from hvdl.host import launcher_rank
from hvdl.inference import evaluation, format_report


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(this command's options, the `--KEY VALUE` config overrides)."""
    parser = ArgumentParser(prog="hvdl eval", description=__doc__.splitlines()[0],
                            epilog=overrides_epilog())
    parser.add_argument("--checkpoint", required=True, type=Path, help="a .pt written by hvdl")
    parser.add_argument("--data_dir", "--data-dir", default="", help="MNIST folder")
    parser.add_argument("--out", type=Path, help="write the full report as JSON here")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, rest = parse(sys.argv[1:] if argv is None else argv)
    is_root = launcher_rank() == 0
    try:
        found = evaluation(load_trained(args.checkpoint), rest, args.data_dir)
    except BadInput as err:
        raise fail(str(err), is_root) from None
    if is_root:
        print(format_report(found))
        if args.out:
            args.out.write_text(json.dumps(found, indent=2) + "\n")
    dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
