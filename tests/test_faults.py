"""Failures end the job, never hang it: a dead rank under every launcher, a non-finite loss."""

import os
import signal
import subprocess
import time

import pytest
import torch

from procs import check_job, rank_pids, run_job, start_job, wait_for_file

LONG = ["-m", "hvdl.train", "--train_size", "20000", "--batch_size", "50", "--epochs", "5",
        "--checkpoint_every", "5"]

# What each launcher says when a rank dies of SIGKILL.
DEATH_NOTICE = {"gloo": "Exit code: 137", "mpi": "exited on signal 9",
                "mpirun": "exited on signal 9"}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["gloo", "mpi", "mpirun"])
def test_killing_one_of_two_ranks_ends_the_job_within_60_s(tmp_path, launcher):
    """Test that kill -9 of rank 1 makes the launcher end the job non-zero, naming the death."""
    proc = start_job(2, [*LONG, "--results_dir", str(tmp_path)], launcher)
    ranks = rank_pids(proc, 2)
    wait_for_file("*/checkpoints/step-*.pt", tmp_path, proc, timeout=120)  # training is under way
    killed = time.monotonic()
    os.kill(ranks[1], signal.SIGKILL)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{launcher}: the job still ran 60 s after rank 1 was killed")
    assert time.monotonic() - killed < 60
    assert proc.returncode != 0
    assert DEATH_NOTICE[launcher] in out + err, (out + err)[-3000:]


def nan_run(results, np_, launcher, timeout=180):
    """Train 10 good SGD steps, then resume at a learning rate that overflows the weights."""
    base = ["-m", "hvdl.train", "--optimizer", "sgd", "--train_size", "2000", "--batch_size",
            "50", "--epochs", "1", "--results_dir", str(results)]
    check_job(1, [*base, "--lr", "0.05", "--max_steps", "10"], "python", timeout=timeout)
    return run_job(np_, [*base, "--resume", "--lr", "1e10", "--log_every", "1",
                         "--checkpoint_every", "1"], launcher, timeout=timeout)


def assert_checkpoints_finite(results):
    (run_dir,) = list(results.iterdir())
    saved = sorted((run_dir / "checkpoints").glob("step-*.pt"))
    assert saved, "the last good checkpoint was deleted"
    for path in saved:
        model = torch.load(path, weights_only=True)["model"]
        assert all(torch.isfinite(t).all() for t in model.values()), f"{path} is not finite"
    return saved[-1]


@pytest.mark.slow
def test_non_finite_loss_exits_1_and_keeps_the_last_good_checkpoint(tmp_path):
    """Test that a NaN loss ends the run with status 1, one line naming the last good checkpoint."""
    proc = nan_run(tmp_path, 1, "python")
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1].split("\r")[-1]
    assert line.startswith("hvdl: error: train loss became nan") or "not finite" in line, line
    newest = assert_checkpoints_finite(tmp_path)
    assert f"last good checkpoint: {newest}" in line


@pytest.mark.slow
def test_non_finite_loss_on_two_ranks_stops_both_with_one_message(tmp_path):
    """Test that under horovodrun -np 2 both ranks stop at the NaN step and rank 0 alone says so."""
    proc = nan_run(tmp_path, 2, "gloo")
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert text.count("hvdl: error:") == 1, text[-3000:]
    assert "hvdl/train.py" not in text, text[-3000:]  # no rank died with a Python traceback
    assert_checkpoints_finite(tmp_path)
