"""Evaluate a checkpoint on the MNIST test set, data-parallel; the report equals one process's.

    python -m hvdl.evaluate --checkpoint results/runs/<run>/checkpoints/step-000000938.pt
    horovodrun -np 2 python -m hvdl.evaluate --checkpoint ... --out report.json

Prints accuracy, per-class precision/recall/F1 and the confusion matrix (rank 0), and writes the
whole report as JSON with `--out`. Works for the classifier families (cnn, stacked_ae, dbn).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from hvdl import checkpoint, dist, metrics
from hvdl import config as configlib
from hvdl.data import dataset
from hvdl.train import BAD_INPUT, TRAINERS, fail, launcher_rank


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hvdl eval", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="a .pt written by hvdl")
    parser.add_argument("--data_dir", "--data-dir", default="", help="MNIST folder")
    parser.add_argument("--out", type=Path, help="write the full report as JSON here")
    return parser.parse_args(argv)


def format_report(report: dict) -> str:
    lines = [f"test cost {report['cost']:.4f}  accuracy {100 * report['accuracy']:.2f}%  "
             f"macro F1 {report['macro_f1']:.4f}  ({report['count']} images)",
             "class  precision  recall  f1"]
    for c, p, r, f in zip(report["classes"], report["precision"], report["recall"],
                          report["f1"]):
        lines.append(f"{str(c):>5}  {p:9.4f}  {r:6.4f}  {f:.4f}")
    lines.append("confusion (rows: true class, columns: predicted)")
    lines += [" ".join(f"{n:5d}" for n in row) for row in report["confusion"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        payload = checkpoint.load(args.checkpoint)
        saved = configlib.flatten(payload["config"], "checkpoint")
        if args.data_dir:
            saved["data_dir"] = args.data_dir
        config = configlib.build(saved)
        trainer = importlib.import_module(f"hvdl.trainers.{TRAINERS[config.family]}")
        if not hasattr(trainer, "build_classifier"):
            raise configlib.ConfigError(
                f"hvdl eval needs a classifier; family {config.family!r} is not one "
                "(allowed: cnn, stacked_ae, dbn)")
    except BAD_INPUT as err:
        raise fail(str(err), launcher_rank() == 0) from None
    ctx = dist.init(threads=config.threads or None)
    try:
        data = dataset.load(config, ctx, labels=True, images=config.family == "cnn",
                            given=payload.get("data"), splits=("test",))
    except BAD_INPUT as err:
        raise fail(str(err), ctx.is_root) from None
    model = trainer.build_classifier(config, ctx, data.info)
    model.load_state_dict(payload["model"])
    report = metrics.evaluate_classifier(model, data.test.scan(), data.classes)
    if ctx.is_root:
        print(format_report(report))
        if args.out:
            args.out.write_text(json.dumps(report, indent=2) + "\n")
    dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
