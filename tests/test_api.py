"""The README's Python example, run as a user's script under mpirun on 2 ranks."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from procs import ROOT, check_job

# After the README's lines: what each rank got, for the test to compare.
REPORT = """
import json, os
rank = os.environ.get("OMPI_COMM_WORLD_RANK", "0")
json.dump({"accuracy": result.metrics["test"]["accuracy"], "run_dir": str(result.run_dir),
           "evaluated": report["accuracy"], "manifest": str(manifest),
           "model": type(dbn).__name__}, open(f"out-{rank}.json", "w"))
"""


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"### From Python\n\n```python\n(.*?)```", readme, re.S)
    assert found, "README has no 'From Python' example"
    return found.group(1)


def write_table(path, rows: int = 300, features: int = 16, classes: int = 3) -> None:
    """A CSV of `classes` well-separated clusters with a 'target' column, as digits.csv."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, rows)
    x = rng.normal(0, 3, (classes, features))[y] + rng.normal(0, 1, (rows, features))
    lines = [",".join([f"f{i}" for i in range(features)] + ["target"])]
    lines += [",".join(f"{v:.4f}" for v in row) + f",{t}" for row, t in zip(x, y)]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_readme_python_example_trains_evaluates_and_encodes_on_two_ranks(tmp_path):
    """Test that the README's hvdl.fit / evaluate / encode lines, as a script under mpirun -np 2,
    train a DBN on a CSV, give every rank the same result, and write one part per rank."""
    write_table(tmp_path / "digits.csv")
    (tmp_path / "fit.py").write_text(readme_example() + REPORT)
    check_job(2, ["fit.py"], "mpirun", cwd=tmp_path, PYTHONPATH=str(ROOT), timeout=600)
    outs = [json.loads((tmp_path / f"out-{r}.json").read_text()) for r in (0, 1)]
    assert outs[0] == outs[1], outs
    out = outs[0]
    assert out["accuracy"] >= 0.9 and out["evaluated"] == out["accuracy"], out
    assert out["model"] == "Sequential"  # the DBN as a feed-forward torch module
    run_dir = tmp_path / out["run_dir"]
    assert (run_dir / "metrics.json").is_file() and list(run_dir.glob("checkpoints/step-*.pt"))
    manifest = json.loads((tmp_path / out["manifest"]).read_text())
    assert [p["rank"] for p in manifest["parts"]] == [0, 1] and manifest["rows"] == 300
    parts = sorted((tmp_path / "digits-codes").glob("part-*.parquet"))
    assert len(parts) == 2
    assert sum(pq.read_metadata(p).num_rows for p in parts) == 300
