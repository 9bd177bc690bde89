"""Summarise a run folder as Markdown: what ran, where, and the per-epoch figures.

    python -m hvdl.report results/runs/20261120-225403-lenet5 >> results/lenet5/README.md

The tables in `results/` are produced this way from the run's own `metadata.json` and
`metrics.json`, so every figure there can be traced to a run folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


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


def epoch_table(name: str, history: list[dict[str, Any]]) -> list[str]:
    lines = [f"| {name} epoch | train cost | test cost | test accuracy | seconds | samples/s |",
             "|---:|---:|---:|---:|---:|---:|"]
    for e in history:
        test = e.get("test") or {}
        accuracy = f"{100 * test['accuracy']:.2f}%" if "accuracy" in test else ""
        cost = f"{test['cost']:.4f}" if "cost" in test else ""
        lines.append(f"| {e['epoch']} | {e['train_cost']:.4f} | {cost} | {accuracy} | "
                     f"{e['seconds']:.1f} | {e['samples_per_s']:.0f} |")
    return lines


def summarise(run_dir: Path) -> str:
    meta = json.loads((run_dir / "metadata.json").read_text())
    result = json.loads((run_dir / "metrics.json").read_text())
    lines = [f"### {run_dir.name}", "", *describe(meta), ""]
    for name, value in result.items():
        if isinstance(value, list) and value and "epoch" in value[0]:
            lines += [*epoch_table(name, value), ""]
    total = sum(e["seconds"] for v in result.values() if isinstance(v, list)
                for e in v if isinstance(e, dict) and "seconds" in e)
    lines.append(f"Training time over all epochs: {total:.1f} s.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hvdl report", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders")
    args = parser.parse_args(argv)
    for run_dir in args.runs:
        if not (run_dir / "metrics.json").is_file():
            print(f"hvdl report: error: {run_dir} has no metrics.json; give a run folder",
                  file=sys.stderr)
            return 2
        print(summarise(run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
