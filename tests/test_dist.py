"""Launcher detection and per-rank resources (no Horovod job needed), and the horovod engine
under a plain `mpirun` (a real job)."""

import json
import subprocess
import sys
import time

import pytest
import torch

from hvdl.host import cpu_threads, launcher_size
from hvdl.loop.schedule import scaled_lr
from procs import ROOT, check_job, train_here


def test_launcher_size_reads_open_mpi_and_slurm_steps():
    """Test that the task count comes from Open MPI, or from Slurm only inside a job step."""
    assert launcher_size({"OMPI_COMM_WORLD_SIZE": "4"}) == (4, "OMPI_COMM_WORLD_SIZE")
    assert launcher_size({"SLURM_NTASKS": "8", "SLURM_STEP_ID": "0"}) == (8, "SLURM_NTASKS")
    assert launcher_size({"SLURM_NTASKS": "8"}) == (1, None)  # the batch script, not a step
    assert launcher_size({}) == (1, None)


def test_threads_follow_slurm_then_local_ranks():
    """Test that torch threads come from HVDL_THREADS, then SLURM_CPUS_PER_TASK, then cores."""
    assert cpu_threads(2, {"HVDL_THREADS": "3", "SLURM_CPUS_PER_TASK": "5"}) == 3
    assert cpu_threads(2, {"SLURM_CPUS_PER_TASK": "5"}) == 5
    assert cpu_threads(64, {}) == 1


def test_learning_rate_warms_up_to_the_scaled_rate():
    """Test that the rate starts at the single-rank rate and reaches rate × ranks."""
    assert scaled_lr(0.1, 4, step=0, warmup_steps=10) == 0.1
    assert abs(scaled_lr(0.1, 4, step=5, warmup_steps=10) - 0.25) < 1e-12
    assert scaled_lr(0.1, 4, step=10, warmup_steps=10) == 0.4
    assert scaled_lr(0.1, 4, step=0, warmup_steps=10, scaling="none") == 0.1


def final_weights(results):
    (run_dir,) = results.iterdir()
    last = sorted((run_dir / "checkpoints").glob("step-*.pt"))[-1]
    return run_dir, torch.load(last, weights_only=True)["model"]


@pytest.mark.slow
def test_horovod_engine_under_plain_mpirun_trains_as_one_process(tmp_path):
    """Test that `mpirun -np 2 python -m hvdl.train --dist.backend horovod` runs Horovod on MPI,
    says and records so, and its SGD steps on one global batch give one process's weights."""
    weights = {}
    for np_ in (1, 2):
        results = tmp_path / f"np{np_}"
        args = ["-m", "hvdl.train", "--train_size", "128", "--batch_size", str(128 // np_),
                "--epochs", "2", "--optimizer", "sgd", "--momentum", "0.9", "--lr", "0.05",
                "--lr_scaling", "none", "--schedule", "constant", "--results_dir", str(results)]
        if np_ == 1:  # the reference, in this process
            train_here(args)
        else:
            out = check_job(2, [*args, "--dist.backend", "horovod"], "mpirun", timeout=300)
        run_dir, weights[np_] = final_weights(results)
    assert out.splitlines()[0] == (
        "hvdl: engine horovod (dist.backend horovod; started by mpirun)"), out[:300]
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert (meta["engine"], meta["controller"], meta["world_size"]) == ("horovod", "mpi", 2), meta
    assert sorted(r["rank"] for r in meta["inventory"]) == [0, 1], meta["inventory"]
    from hvdl.models.cnn import LeNet5

    torch.manual_seed(42)  # the run's seed: its initial weights
    initial = LeNet5().state_dict()
    assert max(float((weights[1][k] - initial[k]).abs().max()) for k in initial) > 1e-3
    for name, w1 in weights[1].items():
        torch.testing.assert_close(weights[2][name], w1, rtol=0, atol=1e-6, msg=name)


def test_seconds_since_start_counts_from_the_process_start_to_a_tick():
    """Test that a process's seconds since its start (a run's first_step_s) lie between the
    time it slept and the time its parent waited for it: within a clock tick, not psutil's
    up-to-a-second of whole boot seconds."""
    code = ("import time; time.sleep(0.5); from hvdl.host import seconds_since_start; "
            "print(seconds_since_start())")
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    waited = time.monotonic() - started
    assert 0.5 <= float(out) <= waited + 0.01, (float(out), waited)
