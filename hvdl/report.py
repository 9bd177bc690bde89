"""Summarise a run folder as Markdown: what ran, where, and the per-epoch figures.

    python -m hvdl.report results/runs/20261120-225403-lenet5 >> results/lenet5/README.md
    python -m hvdl.report --compare perf.sync,perf.sync_every results/runs/sync-modes/*

The tables in `results/` are produced this way from the run's own `metadata.json` and
`metrics.json`, so every figure there can be traced to a run folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import tomllib

from hvdl.errors import ArgumentParser


def describe(meta: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v)
    git = meta.get("git", {})
    commit = (git.get("commit") or "unknown")[:10] + (" (dirty)" if git.get("dirty") else "")
    devices = sorted({f"{r['device']} ×{r['threads']} threads" for r in meta["inventory"]})
    return [f"- command: `{' '.join(['python -m hvdl.train', *meta['argv'][1:]])}` on "
            f"{meta['world_size']} rank(s) ({meta.get('controller', '?')} controller)",
            f"- started {meta['started']} on {', '.join(meta['hosts'])} "
            f"({meta.get('platform', '')}); devices: {', '.join(devices)}",
            f"- code {commit}; {versions}"]


# Per-epoch figures a stage may record, in table order: (key, column, format).
COLUMNS = [("train_cost", "train cost", "{:.4f}"), ("train_recon", "train recon.", "{:.3f}"),
           ("heldout_recon", "held-out recon.", "{:.3f}"),
           ("free_energy_gap", "free-energy gap", "{:.3f}"),
           ("test.cost", "test cost", "{:.4f}"), ("test.accuracy", "test accuracy", "{:.2%}"),
           ("test.squared_error", "test squared error", "{:.3f}"),
           ("seconds", "seconds", "{:.1f}"), ("samples_per_s", "samples/s", "{:.0f}")]


def dotted(record: dict[str, Any], key: str) -> Any:
    """`record[key]`, following dots into nested tables and lists ("test.accuracy",
    "train.0.seconds"); None if absent."""
    value: Any = record
    for part in key.split("."):
        if isinstance(value, list) and part.isdigit():
            value = value[int(part)] if int(part) < len(value) else None
        else:
            value = value.get(part) if isinstance(value, dict) else None
    return value


def epochs(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every timed epoch of every stage in a run's metrics, in order."""
    return [e for v in result.values() if isinstance(v, list) for e in v
            if isinstance(e, dict) and "seconds" in e]


def training_seconds(result: dict[str, Any]) -> float:
    """The seconds a run trained: its epochs' and its full-batch (L-BFGS) stages'."""
    full_batch = [result.get("final") or {}, *(result.get("stages") or {}).values()]
    return (sum(e["seconds"] for e in epochs(result))
            + sum(r["seconds"] for r in full_batch if "iterations" in r and "seconds" in r))


def epoch_table(name: str, history: list[dict[str, Any]]) -> list[str]:
    """The columns of COLUMNS that any epoch of the stage recorded, one row per epoch."""
    columns = [c for c in COLUMNS if any(dotted(e, c[0]) is not None for e in history)]
    lines = [f"| {name} epoch | " + " | ".join(c[1] for c in columns) + " |",
             "|---:|" + "---:|" * len(columns)]
    for e in history:
        cells = [fmt.format(v) if (v := dotted(e, key)) is not None else ""
                 for key, _, fmt in columns]
        lines.append(f"| {e['epoch']} | " + " | ".join(cells) + " |")
    return lines


def summarise(run_dir: Path) -> str:
    meta = json.loads((run_dir / "metadata.json").read_text())
    result = json.loads((run_dir / "metrics.json").read_text())
    lines = [f"### {run_dir.name}", "", *describe(meta), ""]
    for name, value in result.items():
        if isinstance(value, list) and value and "epoch" in value[0]:
            lines += [*epoch_table(name, value), ""]
    total = training_seconds(result)
    lines.append(f"Training time over all epochs: {total:.1f} s.")
    return "\n".join(lines) + "\n"


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def cell(value: Any) -> str:
    """A figure for a table cell: numbers rounded, lists joined, nothing for a missing value."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value)
    return str(value)


def weights_digest(run_dir: Path) -> str:
    """The first 12 hex digits of a SHA-256 over the newest checkpoint's model tensors."""
    import hashlib

    import torch

    found = sorted((run_dir / "checkpoints").glob("step-*.pt"))
    if not found:
        return "no checkpoint"
    model = torch.load(found[-1], map_location="cpu", weights_only=True)["model"]
    digest = hashlib.sha256()
    for name in sorted(model):
        digest.update(name.encode() + model[name].contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def compare(run_dirs: list[Path], keys: list[str], *, metrics: tuple[str, ...] = (),
            data: tuple[str, ...] = (), weights: bool = False) -> str:
    """One row per run: the settings `keys`, test accuracy per epoch, final accuracy, time, and
    any `metrics` (metrics.json) and `data` (data.json) keys, and the weights' digest."""
    extra = [*metrics, *(f"data {k}" for k in data), *(["weights"] if weights else [])]
    lines = ["| run | ranks | " + " | ".join([*keys, "test accuracy per epoch", "final",
                                              "training s", *extra]) + " |",
             "|---|---:|" + "---|" * len(keys) + "---|---:|---:|" + "---:|" * len(extra)]
    for run_dir in run_dirs:
        meta = json.loads((run_dir / "metadata.json").read_text())
        result = json.loads((run_dir / "metrics.json").read_text())
        config = tomllib.loads((run_dir / "config.toml").read_text())
        record = read_json(run_dir / "data.json")
        timed = epochs(result)
        settings = [dotted(config, k) for k in keys]
        if None in settings:
            raise KeyError(keys[settings.index(None)])
        curve = ", ".join(f"{100 * a:.2f}" for e in timed
                          if (a := dotted(e, "test.accuracy")) is not None)
        final = (result.get("final") or {}).get("accuracy")
        cells = [cell(dotted(result, k)) for k in metrics]
        cells += [cell(dotted(record, k)) for k in data]
        cells += [weights_digest(run_dir)] if weights else []
        lines.append(f"| {run_dir.name} | {meta['world_size']} | "
                     + " | ".join(map(str, settings))
                     + f" | {curve} | {'' if final is None else f'{100 * final:.2f}%'} | "
                     f"{training_seconds(result):.1f} |"
                     + "".join(f" {c} |" for c in cells))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="hvdl report", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders")
    parser.add_argument("--compare", metavar="KEYS", type=lambda v: v.split(","),
                        help="one table, a row per run, with these comma-separated config keys "
                        "(e.g. perf.sync,perf.sync_every)")
    keys = lambda v: tuple(v.split(","))  # noqa: E731
    parser.add_argument("--metrics", metavar="KEYS", type=keys, default=(),
                        help="with --compare: metrics.json keys as columns (first_step_s, "
                        "peak_rss_mb, train.0.samples_per_s)")
    parser.add_argument("--data", metavar="KEYS", type=keys, default=(),
                        help="with --compare: data.json keys as columns (memory, rows.train)")
    parser.add_argument("--weights", action="store_true",
                        help="with --compare: a digest of each run's final weights")
    args = parser.parse_args(argv)
    for run_dir in args.runs:
        if not (run_dir / "metrics.json").is_file():
            print(f"hvdl report: error: {run_dir} has no metrics.json; give a run folder",
                  file=sys.stderr)
            return 2
    if args.compare:
        try:
            print(compare(args.runs, args.compare, metrics=args.metrics, data=args.data,
                          weights=args.weights))
        except KeyError as err:
            print(f"hvdl report: error: no config key {err.args[0]!r} in a run's config.toml; "
                  "give keys as in config.toml (lr, perf.sync)", file=sys.stderr)
            return 2
        return 0
    for run_dir in args.runs:
        print(summarise(run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
