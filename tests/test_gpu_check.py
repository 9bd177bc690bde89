"""launch/gpu-check.sh on a machine without CUDA: one line, the CPU parts, the GPU parts skipped.

    python -m pytest tests/test_gpu_check.py

The script runs as a real process with this python (HVDL_PYTHON). Where CUDA is available the
script would take its GPU path for minutes, so the tests skip there.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from hvdl import config as configlib
from procs import ROOT

SCRIPT = ROOT / "launch" / "gpu-check.sh"
GPU_PARTS = ["gpu tests", "lenet5_fast", "lenet5_fast fp32", "rbm 784-500 CD-1",
             "rbm 784-500 CD-1 batch 1000", "bench 1 rank", "peak GPU memory"]
MEASURED_ALONE = {"lenet5_fast", "rbm_mnist"}  # not run again in the recipe loop
BUDGET_S, KEPT_S = 420, 20  # the default budget; what the caps leave for summary and archive
GPU_TESTS = re.compile(r"python -m pytest -m gpu((?: tests/test_\w+\.py)+)")

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
    """Test that without CUDA the check prints one line, exits 0, runs its CPU parts (the MPI
    preflight first), lists every GPU part as skipped and packs the folder into one archive."""
    out = tmp_path / "check"
    proc = run_check("--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    assert re.fullmatch(r"gpu-check: no CUDA device \(torch \S+, cuda available: False\); ran "
                        r"the CPU parts only \(4 ok, 0 failed\): " + re.escape(str(out)) +
                        r"/summary\.md, " + re.escape(str(out)) + r"\.tar\.gz", lines[0]), lines[0]
    rows = summary_rows(out / "summary.md")
    recipes = configlib.recipe_names()
    assert MEASURED_ALONE <= set(recipes)
    assert list(rows)[0] == "mpi runtime"
    looped = [f"recipe {name}" for name in recipes if name not in MEASURED_ALONE]
    assert [part for part in rows if part.startswith("recipe ")] == looped
    for part in GPU_PARTS + looped:
        assert rows.pop(part)[0] == "skipped: no CUDA device", part
    assert {part: status for part, (status, _) in rows.items()} == {
        "mpi runtime": "ok", "modules": "ok", "recipes load": "ok", "lenet5_fast CPU smoke": "ok"}
    assert re.fullmatch(r"yes: (mpirun|mpiexec)(, mpiexec)? on PATH; mpi4py loads \S.*"
                        r"|no MPI runtime \(.*\): the mpi GPU tests skip",
                        rows["mpi runtime"][1]), rows["mpi runtime"][1]
    assert rows["recipes load"][1] == f"{len(recipes)} recipes: {' '.join(recipes)}"
    first, last = map(float, re.match(r"train cost (\S+) -> (\S+) in 14 steps",
                                      rows["lenet5_fast CPU smoke"][1]).groups())
    assert last < first
    assert list((out / "runs" / "lenet5_fast-CPU-smoke").glob("*/metrics.json"))
    assert (out / "logs" / "lenet5_fast-CPU-smoke.log").stat().st_size > 0
    with tarfile.open(tmp_path / "check.tar.gz") as archive:
        names = archive.getnames()
        packed = archive.extractfile("check/summary.md").read().decode()
    assert packed == (out / "summary.md").read_text()
    assert {"check/machine.txt", "check/logs/mpi-runtime.log",
            "check/logs/lenet5_fast-CPU-smoke.log"} <= set(names)
    assert any(n.endswith("/metrics.json") for n in names)
    assert not [n for n in names if n.endswith(".pt") or "tfevents" in n]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["check", "check.tar.gz"]


def test_the_parts_caps_add_up_within_the_budget():
    """Test that the GPU check's part caps, shares of a 420 s budget, add up to at most the budget
    less the 20 s kept for the summary and archive, and that the header's table says the same."""
    text = SCRIPT.read_text()
    assert f"budget=${{HVDL_CHECK_BUDGET_S:-{BUDGET_S}}}" in text
    caps = [int(c) for c in re.findall(r"\$\(cap (\d+)\)", text)]
    assert len(caps) == 10 and sum(caps) <= BUDGET_S - KEPT_S, caps
    header = text[:text.index("set -euo pipefail")]
    table = [int(c) for c in re.findall(r"^#   [a-z][^\n]*? (\d+) s  ", header, re.M)]
    assert sorted(table) == sorted(caps), (table, caps)
    assert BUDGET_S + 60 <= 600  # one 10-minute device command, with a minute to spare


def test_the_gpu_test_list_holds_every_gpu_marked_test():
    """Test that the GPU tests the check runs, and the README tells users to run, are the files
    holding every gpu-marked test."""
    marked = sorted(p.name for p in (ROOT / "tests").glob("test_*.py")
                    if "@pytest.mark." + "gpu" in p.read_text())
    script = SCRIPT.read_text()
    header = script[:script.index("set -euo pipefail")]
    run = re.search(r"^gpu_tests=\(([^)]*)\)", script, re.M)
    assert run, "no gpu_tests=(...) in the script"
    lists = {"the check's run": run.group(1)}
    for where, text in (("the check's header", header),
                        ("README.md", (ROOT / "README.md").read_text())):
        found = GPU_TESTS.search(re.sub(r"\s*\n[#\s]*", " ", text))
        assert found, f"{where}: no `python -m pytest -m gpu tests/...` line"
        lists[where] = found.group(1)
    for where, files in lists.items():
        assert sorted(Path(f).name for f in files.split()) == marked, where


def test_an_unknown_option_is_one_line_and_status_2(tmp_path):
    """Test that an unknown option ends the check at once with one line and status 2."""
    proc = run_check("--outt", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stdout == "" and proc.stderr.splitlines() == [
        "gpu-check: unknown option --outt; allowed: --out DIR, or DIR alone"]
    assert not list(tmp_path.iterdir())
