"""Elastic training under a real `horovodrun --min-np --max-np --host-discovery-script` on
localhost: a worker removed mid-run leaves the others to finish, a worker added joins the run."""

import json
import re
import subprocess
import sys

import pytest

from procs import BIN, ROOT, finish, job_env, wait_for_file

pytestmark = pytest.mark.slow

# 40 steps an epoch on 2 ranks, 80 on 1; elastic state committed every 5 steps.
COMMON = ["-m", "hvdl.train", "--elastic", "--train_size", "4000", "--batch_size", "50",
          "--commit_every", "5", "--checkpoint_every", "20", "--log_every", "10",
          "--schedule", "constant", "--warmup_epochs", "0"]  # so the rate is lr × ranks exactly
# One run for each trainer the minibatch families are made of: the classifier (cnn), the
# autoencoder (sae) and the RBM stack with its fine-tuning (dbn: its first stage is the rbm
# family's trainer, its last a classifier; deep_ae differs from it only in the fine-tuning net,
# which runs on one rank after the reset, as sae's does). Each small enough for the suite, and
# long enough that the change (horovodrun reads the hosts file every second, the workers see it
# at their next commit, a reset takes seconds more) lands well inside the first stage on a
# loaded machine: that stage runs for 10 s or more on two ranks after the first checkpoint
# (about 0.4 to 0.9 s an epoch); the stages after it run on one rank.
FAMILIES = {
    "cnn": ["--model", "lenet5", "--epochs", "14"],
    "sae": ["--model", "sae_mnist", "--optimizer", "adam", "--layers", "0,64", "--epochs", "30"],
    "dbn": ["--model", "dbn_small", "--layers", "0,500,64,0", "--rbm.pretrain_epochs", "18",
            "--rbm.finetune_epochs", "2"],
}
TRAIN = [*COMMON, *FAMILIES["cnn"]]
EPOCHS = int(FAMILIES["cnn"][-1])


def start_elastic(np_: int, hosts, results, train=TRAIN) -> subprocess.Popen:
    """horovodrun in elastic mode, its hosts read from the file `hosts` every second."""
    cmd = [str(BIN / "horovodrun"), "-np", str(np_), "--min-np", "1", "--max-np", "2",
           "--network-interface", "lo",  # one host: without it horovodrun waits for a second
           "--host-discovery-script", str(ROOT / "launch" / "discover-hosts.sh"),
           sys.executable, *train, "--results_dir", str(results)]
    return subprocess.Popen(cmd, cwd=ROOT, env=job_env(HVDL_HOSTS_FILE=str(hosts)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_ok(proc, timeout=240):
    """The elastic job's stdout once it has ended with status 0."""
    status, out, err = finish(proc, timeout)
    assert status == 0, f"{out[-3000:]}\n{err[-3000:]}"
    return out


def stages(results):
    """(world size at the start, {stage: its epochs' records}) from the run folder."""
    (run_dir,) = list(results.iterdir())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    start = json.loads((run_dir / "metadata.json").read_text())["world_size"]
    return start, {name: history for name, history in metrics.items()
                   if isinstance(history, list) and history and isinstance(history[0], dict)
                   and "ranks" in history[0]}


def check_epochs(history):
    """Every epoch ends with one model on every rank, and steps that follow the world size."""
    steps = 0
    for entry in history:
        assert entry["parameters_identical"], entry
        assert entry["steps_an_epoch"] == {1: 80, 2: 40}[entry["ranks"]], entry
        assert entry["step"] > steps, history  # the step count carries on across a reset
        steps = entry["step"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_removing_a_slot_mid_training_lets_the_run_finish_on_one_rank(tmp_path, family):
    """Test that dropping one of two slots mid-run resets to 1 rank, with the shards dealt again
    and the rate scaled down, and the run completes, for each minibatch family."""
    hosts, results = tmp_path / "hosts", tmp_path / "runs"
    hosts.write_text("localhost:2\n")
    proc = start_elastic(2, hosts, results, [*COMMON, *FAMILIES[family]])
    wait_for_file("*/checkpoints/step-*.pt", results, proc, timeout=180)
    hosts.write_text("localhost:1\n")
    out = finish_ok(proc)
    start, found = stages(results)
    first, *later = found.values()
    assert start == 2 and first[-1]["ranks"] == 1, (start, found)
    assert all(e["ranks"] == 1 for history in later for e in history), found
    for history in found.values():
        check_epochs(history)
    assert ", 40 steps an epoch, lr x" in out  # the start, on two ranks
    assert re.search(r"elastic: 1 rank\(s\), \w+ epoch \d+, step \d+, 80 steps an epoch, "
                     r"lr x1\b", out), out[-3000:]  # the reset: shards and rate for one rank


# The stages each family's run records, with their epochs: every one must be there in full.
EPOCHS_OF = {"cnn": {"train": EPOCHS}, "dbn": {"pretrain1": 18, "pretrain2": 18, "finetune": 2}}


@pytest.mark.parametrize("family", list(EPOCHS_OF))
def test_adding_a_slot_mid_training_lets_a_new_worker_join(tmp_path, family):
    """Test that a slot added mid-run starts a worker that joins with rank 0's model and step,
    and the run completes on 2 ranks at the doubled rate with every epoch recorded (LeNet-5, and a
    DBN: the join lands in its first RBM, every later stage starts on 2 ranks)."""
    hosts, results = tmp_path / "hosts", tmp_path / "runs"
    hosts.write_text("localhost:1\n")
    proc = start_elastic(1, hosts, results, [*COMMON, *FAMILIES[family]])
    wait_for_file("*/checkpoints/step-*.pt", results, proc, timeout=180)
    hosts.write_text("localhost:2\n")
    out = finish_ok(proc)
    start, found = stages(results)
    assert {name: [e["epoch"] for e in history] for name, history in found.items()} == {
        name: list(range(1, epochs + 1)) for name, epochs in EPOCHS_OF[family].items()}, found
    first, *later = found.values()
    assert start == 1 and first[-1]["ranks"] == 2, (start, found)
    assert all(e["ranks"] == 2 for history in later for e in history), found
    for history in found.values():
        check_epochs(history)  # identical parameters on both ranks after the join
    name = next(iter(found))
    assert re.search(rf"elastic: 2 rank\(s\), {name} epoch \d+, step [1-9]\d*, 40 steps an "
                     r"epoch, lr x2\b", out), out[-3000:]  # the join, where rank 0 had got to
