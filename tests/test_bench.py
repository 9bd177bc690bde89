"""The benchmark: its worker's reports, its summary and files, and a tiny real run.

Figures are never asserted (they depend on the machine); the structure and the files are.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hvdl.bench import launch as bench_launch
from hvdl.bench import report as bench_report
from hvdl.bench import suite as bench
from hvdl.bench import worker as bench_worker
from procs import ROOT, check_job, job_env

REPORT_KEYS = {"impl", "model", "ranks", "step_ms", "compute_ms", "allreduce_ms", "main_cpu_ms",
               "samples_per_s", "samples_per_s_per_rank", "peak_memory_mb", "per_rank"}


@pytest.mark.parametrize("model", ["lenet5", "sae", "rbm", "dbn"])
def test_plain_worker_reports_the_figures_of_each_family(tmp_path, model):
    """Test that the plain PyTorch worker trains each family briefly and writes its report."""
    out = tmp_path / "report.json"
    bench_worker.main(["--impl", "plain", "--model", model, "--steps", "3", "--warmup", "1",
                       "--report", str(out)])
    report = json.loads(out.read_text())
    assert REPORT_KEYS <= set(report)
    assert report["ranks"] == 1 and report["allreduce_ms"] == 0.0
    assert report["step_ms"] > 0 and report["samples_per_s"] > 0


def fake_runs():
    """Runs as bench.run_one returns them, for two implementations and a failure."""
    def run(impl, ranks, repeat, step_ms):
        batch = 64
        report = {"step_ms": step_ms, "compute_ms": step_ms * 0.9,
                  "allreduce_ms": step_ms * 0.1 if ranks > 1 else 0.0,
                  "samples_per_s": ranks * batch * 1e3 / step_ms,
                  "samples_per_s_per_rank": batch * 1e3 / step_ms, "main_cpu_ms": step_ms,
                  "peak_memory_mb": 300.0}
        return {"model": "lenet5", "impl": impl, "ranks": ranks, "repeat": repeat,
                "threads": 1, "command": "x", "wall_s": 1.0, "interference": 0.01,
                "report": report}
    runs = [run("plain", 1, r, 6.0 + r) for r in range(3)]
    runs += [run("hvdl", 1, r, 6.1 + r) for r in range(3)]
    runs += [run("hvdl", 2, r, 7.0 + r) for r in range(3)]
    runs.append({"model": "lenet5", "impl": "ddp", "ranks": 2, "repeat": 0, "threads": 1,
                 "command": "x", "wall_s": 1.0, "interference": 0.0, "error": "boom"})
    return runs


def test_summary_takes_medians_and_computes_efficiency_and_targets(tmp_path):
    """Test that the summary's medians, spreads, ratios and target checks follow the runs."""
    result = bench_report.assemble({"models": ["lenet5"]}, fake_runs(),
                                   {"load_before": (0.1, 0, 0), "load_after": (0.2, 0, 0)}, [])
    rows = {(r["impl"], r["ranks"]): r for r in result["summary"]}
    assert rows[("plain", 1)]["step_ms"] == {"median": 7.0, "min": 6.0, "max": 8.0}
    hvdl2 = rows[("hvdl", 2)]
    expected = hvdl2["samples_per_s"]["median"] / (2 * rows[("hvdl", 1)]["samples_per_s"]
                                                   ["median"])
    assert hvdl2["efficiency"] == pytest.approx(expected)
    assert rows[("ddp", 2)]["failed"] == 1 and "step_ms" not in rows[("ddp", 2)]
    assert {t["target"] for t in result["targets"]} == {
        "hvdl at 1 rank >= 0.97x plain", "hvdl scaling 1 -> 2 >= 95%"}
    bench_report.write(result, tmp_path)
    assert json.loads((tmp_path / "bench.json").read_text())["summary"]
    table = (tmp_path / "bench.md").read_text()
    assert "| lenet5 | hvdl | 2 | 1 |" in table and "| lenet5 | ddp | 2 | 1 | failed" in table
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_launch_commands_use_python_horovodrun_and_torchrun():
    """Test that one rank runs as a plain process, N ranks under horovodrun or torchrun."""
    worker = ["--report", "r.json"]
    assert bench_launch.command("hvdl", 1, worker, "mpi")[:3] == [sys.executable, "-m",
                                                           "hvdl.bench.worker"]
    assert "horovodrun" in bench_launch.command("hvdl-hooks", 2, worker, "gloo")[0]
    assert "--bind-to none" in " ".join(bench_launch.command("hvdl", 2, worker, "mpi"))
    assert "--bind-to core" in " ".join(bench_launch.command("hvdl-bindcore", 2, worker, "mpi"))
    ddp = bench_launch.command("ddp", 2, worker, "mpi")
    assert ddp[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc_per_node" in ddp and ddp[-2:] == worker


def test_engine_variants_run_under_their_launchers_and_name_their_engine():
    """Test that hvdl-mpi runs under mpirun, hvdl-torch under torchrun, each naming its engine
    to the worker, and that hvdl-single and plain run at one rank only."""
    args = bench.parse_args(["--models", "lenet5", "--ranks", "1", "2", "--variants", "plain",
                             "hvdl-single", "hvdl-mpi", "hvdl-torch"])
    mpi = bench_launch.command("hvdl-mpi", 2, ["--report", "r.json"], "mpi")
    assert mpi[0] == "mpirun" and mpi[mpi.index("-np") + 1] == "2"
    torchrun = bench_launch.command("hvdl-torch", 2, ["--report", "r.json"], "mpi")
    assert torchrun[1:3] == ["-m", "torch.distributed.run"]
    assert bench_launch.command("ddp", 1, ["--report", "r.json"], "mpi")[1:3] == \
        ["-m", "torch.distributed.run"]
    for impl, engine in (("hvdl-mpi", "mpi"), ("hvdl-torch", "torch"), ("hvdl-single", "single")):
        worker = bench_launch.worker_args(args, "lenet5", impl, 2, 1, Path("r.json"))
        assert worker[worker.index("--engine") + 1] == engine
    assert "--engine" not in bench_launch.worker_args(args, "lenet5", "hvdl", 2, 1, Path("r"))
    assert sorted(bench.plan(args)) == sorted([
        ("lenet5", "plain", 1), ("lenet5", "hvdl-single", 1), ("lenet5", "hvdl-mpi", 1),
        ("lenet5", "hvdl-mpi", 2), ("lenet5", "hvdl-torch", 1), ("lenet5", "hvdl-torch", 2)])


@pytest.mark.slow
@pytest.mark.parametrize("model", ["sae", "rbm"])
def test_hvdl_worker_runs_the_packages_own_loop(tmp_path, model):
    """Test that the hvdl worker trains through hvdl on 2 ranks and reports its allreduce time."""
    out = tmp_path / "report.json"
    check_job(2, ["-m", "hvdl.bench.worker", "--impl", "hvdl", "--model", model, "--steps", "4",
                  "--warmup", "1", "--report", str(out), "--horovod-timeline",
                  str(tmp_path / "timeline.json")], "mpi")
    report = json.loads(out.read_text())
    assert REPORT_KEYS <= set(report) and report["ranks"] == 2
    assert report["controller"] == "mpi" and report["perf"]["grad_sync"] == "fused"
    assert all(r["blocked_s"] is not None for r in report["per_rank"])
    phases = bench_report.timeline_phases(tmp_path / "timeline.json")
    grads = [k for k in phases if k.startswith("allreduce.sync.grads")]
    assert any(k.endswith(" NEGOTIATE_ALLREDUCE") for k in grads)
    assert any(k.endswith(" MPI_ALLREDUCE") for k in grads)


@pytest.mark.slow
def test_tiny_benchmark_writes_json_table_and_plot(tmp_path):
    """Test that `python -m hvdl.bench --tiny` runs plain, hvdl and DDP and writes its files."""
    proc = subprocess.run(
        [sys.executable, "-m", "hvdl.bench", "--tiny", "--models", "lenet5", "--ranks", "1", "2",
         "--out", str(tmp_path)], cwd=ROOT, env=job_env(), capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    done = {(r["impl"], r["ranks"]) for r in result["summary"] if r["runs"] == 1}
    assert done == {("plain", 1), ("hvdl", 1), ("hvdl", 2), ("ddp", 1), ("ddp", 2)}
    assert {"machine", "versions", "date", "git", "conditions"} <= set(result)
    table = (tmp_path / "bench.md").read_text()
    assert table.count("| lenet5 |") >= 5
    assert (tmp_path / "bench.png").stat().st_size > 1000
    (tmp_path / "bench.md").unlink()
    assert bench.main(["--render", str(tmp_path)]) == 0  # redrawn from bench.json alone
    assert (tmp_path / "bench.md").read_text() == table


def test_render_without_a_benchmark_is_a_one_line_error(tmp_path, capsys):
    """Test that `--render` on a folder with no bench.json fails with status 2 and one line."""
    assert bench.main(["--render", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bench.json" in err


def test_malloc_default_leaves_glibc_alone_in_every_job():
    """Test that `--malloc default` gives no allocator setting and turns off hvdl's own."""
    tuned = bench_launch.job_env(1, {}, malloc=True)
    plain = bench_launch.job_env(1, {}, malloc=False)
    assert tuned["MALLOC_MMAP_THRESHOLD_"] == str(32 * 2**20) and "HVDL_MALLOC" not in tuned
    assert plain["HVDL_MALLOC"] == "default"
    assert plain.get("MALLOC_MMAP_THRESHOLD_") == os.environ.get("MALLOC_MMAP_THRESHOLD_")


def test_plain_sparse_ae_computes_the_objective_hvdl_does():
    """Test that the plain loop's sparse-AE loss has hvdl's value of J and hvdl's gradient, so
    that the two loops are timed on the same work."""
    import torch

    from hvdl.bench import plain
    from hvdl.models import autoencoder as ae

    net = plain.build("sae")
    x = torch.rand(64, 784, generator=torch.Generator().manual_seed(0))
    loss = plain.sparse_loss(net, net(x), x, plain.identity, 1)
    model = ae.SparseAutoencoder(n_visible=784, n_hidden=196)
    model.load_state_dict(net.state_dict())
    share, terms = ae.sparse_share(x, *model(x), model.weights(), **plain.SAE)
    assert float(loss.detach()) == pytest.approx(float(terms.cost), rel=1e-6)
    loss.backward()
    share.backward()
    assert torch.allclose(net.encoder.weight.grad, model.encoder.weight.grad, atol=1e-7)


def test_the_sources_benchmark_writes_its_table_for_local_parquet(tmp_path):
    """Test that `python -m hvdl.bench.sources` with local Parquet alone (no servers) reads
    rank 0's share for 1 and 2 ranks and writes its JSON and Markdown table."""
    from hvdl.bench import sources

    assert sources.main(["--rows", "600", "--features", "12", "--repeats", "1", "--folder",
                         str(tmp_path / "files"), "--out", str(tmp_path / "out")]) == 0
    found = json.loads((tmp_path / "out" / "rows600.json").read_text())
    by_ranks = {r["ranks"]: r for r in found["results"] if r["source"] == "parquet"}
    assert by_ranks[1]["rows"] == 600 and by_ranks[2]["rows"] == 300
    assert all(r["mb_per_s"] > 0 and r["first_s"] <= r["total_s"] for r in by_ranks.values())
    assert "| parquet | 2 | 300 |" in (tmp_path / "out" / "rows600.md").read_text()


@pytest.mark.slow
def test_the_sources_benchmark_times_the_first_step_of_two_ranks(tmp_path):
    """Test that `--first-step` launches 2 ranks of a run on the source and records rank 0's
    time to its first step, from the launch (the larger) and from its own start; and that
    `--together` reads with both ranks at once, each its own half."""
    from hvdl.bench import sources

    assert sources.main(["--rows", "600", "--features", "12", "--repeats", "1", "--ranks", "2",
                         "--first-step", "--together", "--folder", str(tmp_path / "files"),
                         "--out", str(tmp_path / "out")]) == 0
    found = json.loads((tmp_path / "out" / "rows600.json").read_text())
    (both,) = found["together"]
    (alone,) = [r for r in found["results"] if r["ranks"] == 2]
    assert both["source"] == "parquet" and len(both["runs"][0]["ranks_mb_per_s"]) == 2
    assert both["mb_per_s"] * both["total_s"] == pytest.approx(2 * alone["mb"])
    (start,) = found["first_steps"]
    assert start["source"] == "parquet" and start["ranks"] == 2
    assert 0 < start["rank_s"] < start["launch_s"] < 120, start
    assert "| parquet | 2 | " in (tmp_path / "out" / "rows600.md").read_text().split(
        "launch to first step")[1]
