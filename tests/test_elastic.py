"""Elastic training under a real `horovodrun --min-np --max-np --host-discovery-script` on
localhost: a worker removed mid-run leaves the others to finish, a worker added joins the run."""

import json
import subprocess
import sys

import pytest

from procs import BIN, ROOT, job_env, wait_for_file

pytestmark = pytest.mark.slow

# 40 steps an epoch on 2 ranks, 80 on 1; elastic state committed every 5 steps.
TRAIN = ["-m", "hvdl.train", "--elastic", "--train_size", "4000", "--batch_size", "50",
         "--epochs", "4", "--commit_every", "5", "--checkpoint_every", "20"]


def start_elastic(np_: int, hosts, results) -> subprocess.Popen:
    """horovodrun in elastic mode, its hosts read from the file `hosts` every second."""
    cmd = [str(BIN / "horovodrun"), "-np", str(np_), "--min-np", "1", "--max-np", "2",
           "--network-interface", "lo",  # one host: without it horovodrun waits for a second
           "--host-discovery-script", str(ROOT / "launch" / "discover-hosts.sh"),
           sys.executable, *TRAIN, "--results_dir", str(results)]
    return subprocess.Popen(cmd, cwd=ROOT, env=job_env(HVDL_HOSTS_FILE=str(hosts)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=240):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"elastic job did not end within {timeout} s\n{out[-3000:]}\n{err[-3000:]}")
    assert proc.returncode == 0, f"{out[-3000:]}\n{err[-3000:]}"
    return out


def sizes(results):
    """(world size at the start, [(epoch, world size at its end)]) from the run folder."""
    (run_dir,) = list(results.iterdir())
    history = json.loads((run_dir / "metrics.json").read_text())["train"]
    start = json.loads((run_dir / "metadata.json").read_text())["world_size"]
    return start, [(entry["epoch"], entry["ranks"]) for entry in history]


def test_removing_a_slot_mid_training_lets_the_run_finish_on_one_rank(tmp_path):
    """Test that dropping one of two slots mid-run resets to 1 rank and the run completes."""
    hosts, results = tmp_path / "hosts", tmp_path / "runs"
    hosts.write_text("localhost:2\n")
    proc = start_elastic(2, hosts, results)
    wait_for_file("*/checkpoints/step-*.pt", results, proc, timeout=180)
    hosts.write_text("localhost:1\n")
    out = finish(proc)
    start, history = sizes(results)
    assert [e for e, _ in history] == [1, 2, 3, 4], history
    assert start == 2 and history[-1][1] == 1, (start, history)
    assert "hvdl: elastic: 2 rank(s)" in out
    assert "hvdl: elastic: 1 rank(s)" in out  # the reset, with the learning rate it now uses


def test_adding_a_slot_mid_training_lets_a_new_worker_join(tmp_path):
    """Test that a slot added mid-run starts a worker that joins, and the run completes on 2."""
    hosts, results = tmp_path / "hosts", tmp_path / "runs"
    hosts.write_text("localhost:1\n")
    proc = start_elastic(1, hosts, results)
    wait_for_file("*/checkpoints/step-*.pt", results, proc, timeout=180)
    hosts.write_text("localhost:2\n")
    out = finish(proc)
    start, history = sizes(results)
    assert [e for e, _ in history] == [1, 2, 3, 4], history
    assert start == 1 and history[-1][1] == 2, (start, history)
    assert "hvdl: elastic: 1 rank(s)" in out and "hvdl: elastic: 2 rank(s)" in out
