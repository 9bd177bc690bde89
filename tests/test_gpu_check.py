"""launch/gpu-check.sh on a machine without CUDA: one line, the CPU parts, the GPU parts skipped.

    python -m pytest tests/test_gpu_check.py

The script runs as a real process with this python (HVDL_PYTHON). Where CUDA is available the
script would take its GPU path for minutes, so the tests skip there.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hvdl import config as configlib
from procs import ROOT

SCRIPT = ROOT / "launch" / "gpu-check.sh"
GPU_PARTS = ["gpu tests", "lenet5_fast", "rbm 784-500 CD-1", "bench 1 rank",
             "lenet5_fast fp32", "horovod build", "peak GPU memory"]

pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="CUDA is available: the check would run its GPU parts")


def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={"PATH": "/usr/bin:/bin",
                                                       "HOME": str(Path.home()),
                                                       "HVDL_PYTHON": sys.executable})


def summary_rows(path: Path) -> dict[str, tuple[str, str]]:
    """{part: (status, figure)} from the table of summary.md."""
    rows = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] != "part":
            rows[cells[0]] = (cells[1], cells[2])
    return rows


@pytest.mark.slow
def test_without_cuda_one_line_the_cpu_parts_and_the_gpu_parts_skipped(tmp_path):
    """Test that without CUDA the check prints one line, exits 0, runs its CPU parts and lists
    every GPU part, one per recipe among them, as skipped in summary.md."""
    out = tmp_path / "check"
    proc = run_check("--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    assert re.fullmatch(r"gpu-check: no CUDA device \(torch \S+, cuda available: False\); ran "
                        r"the CPU parts only \(3 ok, 0 failed\): " + re.escape(str(out)) +
                        r"/summary\.md", lines[0]), lines[0]
    rows = summary_rows(out / "summary.md")
    recipes = configlib.recipe_names()
    assert "lenet5_fast" in recipes
    for part in GPU_PARTS + [f"recipe {name}" for name in recipes]:
        assert rows.pop(part)[0] == "skipped: no CUDA device", part
    assert {part: status for part, (status, _) in rows.items()} == {
        "modules": "ok", "recipes load": "ok", "lenet5_fast CPU smoke": "ok"}
    assert rows["recipes load"][1] == f"{len(recipes)} recipes: {' '.join(recipes)}"
    first, last = map(float, re.match(r"train cost (\S+) -> (\S+) in 14 steps",
                                      rows["lenet5_fast CPU smoke"][1]).groups())
    assert last < first
    assert list((out / "runs" / "lenet5_fast-CPU-smoke").glob("*/metrics.json"))
    assert (out / "logs" / "lenet5_fast-CPU-smoke.log").stat().st_size > 0


def test_an_unknown_option_is_one_line_and_status_2(tmp_path):
    """Test that an unknown option ends the check at once with one line and status 2."""
    proc = run_check("--outt", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stdout == "" and proc.stderr.splitlines() == [
        "gpu-check: unknown option --outt; allowed: --out DIR, or DIR alone"]
    assert not list(tmp_path.iterdir())
