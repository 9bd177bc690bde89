"""Stopping and resuming: a run stopped by SIGTERM or killed, then resumed, ends bit for bit where
an uninterrupted run ends (CPU, one thread per rank), and the ranks agree on where to stop."""

import json
import signal

import pytest
import torch

from procs import (
    assert_resumed,
    finish,
    snapshot_checkpoints,
    start_job,
    train_here,
    wait_for_file,
)

# 40 steps an epoch on one rank (2000 / 50), a checkpoint every 10 steps, a stop check every 10;
# every checkpoint kept, so that a resume can be seen to leave the ones before it alone.
RUN = ["-m", "hvdl.train", "--train_size", "2000", "--batch_size", "50", "--epochs", "2",
       "--checkpoint_every", "10", "--stop_check_every", "10", "--log_every", "10",
       "--keep_checkpoints", "100"]


def run_folder(results):
    (run_dir,) = [p for p in results.iterdir() if p.is_dir()]
    return run_dir


def newest_checkpoint(results):
    """The newest checkpoint of the single run folder under `results`."""
    return torch.load(sorted((run_folder(results) / "checkpoints").glob("step-*.pt"))[-1],
                      weights_only=True)


def assert_same_weights(a, b):
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"], (a["step"], b["step"])
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The final checkpoint of the run trained without interruption on one process."""
    results = tmp_path_factory.mktemp("uninterrupted")
    train_here([*RUN, "--results_dir", str(results)])
    return newest_checkpoint(results)


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_gives_the_uninterrupted_weights(tmp_path, uninterrupted):
    """Test that SIGTERM saves mid-epoch, exits 0, and `--resume` ends with identical weights."""
    proc = start_job(1, [*RUN, "--results_dir", str(tmp_path)], "python")
    wait_for_file("*/checkpoints/step-000000010.pt", tmp_path, proc, timeout=120)
    proc.send_signal(signal.SIGTERM)
    status, out, err = finish(proc)
    assert status == 0, err[-3000:]
    assert "stopped by SIGTERM" in out and "continue with --resume" in out, out
    stopped = newest_checkpoint(tmp_path)
    assert 0 < stopped["batch"] < 40 and stopped["epoch"] in (0, 1), "not stopped mid-epoch"
    assert stopped["step"] < uninterrupted["step"]

    before = snapshot_checkpoints(run_folder(tmp_path))
    out = train_here([*RUN, "--results_dir", str(tmp_path), "--resume"])
    assert_resumed(out, run_folder(tmp_path), before, stopped["step"])
    assert_same_weights(newest_checkpoint(tmp_path), uninterrupted)
    (run_dir,) = tmp_path.iterdir()
    record = json.loads((run_dir / "metrics.json").read_text())
    assert [e["epoch"] for e in record["train"]] == [1, 2]
    assert record["stops"][0]["signal"] == "SIGTERM"


@pytest.mark.slow
def test_kill_9_after_a_checkpoint_then_resume_gives_the_uninterrupted_weights(tmp_path,
                                                                               uninterrupted):
    """Test that a run killed with SIGKILL resumes from its newest checkpoint to the same end."""
    proc = start_job(1, [*RUN, "--results_dir", str(tmp_path)], "python")
    wait_for_file("*/checkpoints/step-000000020.pt", tmp_path, proc, timeout=120)
    proc.kill()
    status, _, _ = finish(proc)
    assert status == -signal.SIGKILL
    killed = newest_checkpoint(tmp_path)["step"]
    assert killed < uninterrupted["step"]

    before = snapshot_checkpoints(run_folder(tmp_path))
    out = train_here([*RUN, "--results_dir", str(tmp_path), "--resume", "auto"])
    assert_resumed(out, run_folder(tmp_path), before, killed)
    assert_same_weights(newest_checkpoint(tmp_path), uninterrupted)


def test_stop_signal_handlers_are_installed_only_while_noting(monkeypatch):
    """Test that StopSignal notes SIGTERM/SIGUSR1 while active, that a signal noted by the
    run's outer StopSignal between two loops reaches the next loop, and that the old handlers
    come back afterwards with nothing noted."""
    from hvdl.loop.preemption import StopSignal

    before = signal.getsignal(signal.SIGTERM)
    with StopSignal(every=5) as stop:
        assert signal.getsignal(signal.SIGTERM) != before
        signal.raise_signal(signal.SIGUSR1)
        assert stop.received == signal.SIGUSR1
    assert signal.getsignal(signal.SIGTERM) == before
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL

    monkeypatch.setattr("hvdl.dist.world_size", lambda: 1)  # one process: no allreduce
    with StopSignal(every=5):  # the run
        with StopSignal(every=5) as first:  # a stage's loop
            assert first.agreed(5) is None
        signal.raise_signal(signal.SIGTERM)  # between the stages
        with StopSignal(every=5) as second:
            assert second.agreed(5) == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == before
    with StopSignal(every=5) as later:
        assert later.received == 0


@pytest.mark.slow
def test_a_streamed_run_stopped_and_resumed_mid_epoch_ends_as_an_uninterrupted_one(tmp_path):
    """Test that a streamed shard (windows of a fifth of it) resumed after SIGTERM mid-epoch ends
    with the weights of an uninterrupted streamed run, and of one held in memory."""
    run = [*RUN, "--data.buffer_mb", "1.2"]  # two windows of 0.6 MB: about 200 images each
    weights = {}
    for memory in ("stream", "device"):
        out = tmp_path / f"whole-{memory}"
        train_here([*run, "--data.memory", memory, "--results_dir", str(out)])
        weights[memory] = newest_checkpoint(out)
    assert_same_weights(weights["stream"], weights["device"])
    cut = [*run, "--data.memory", "stream", "--results_dir", str(tmp_path / "cut")]
    proc = start_job(1, cut, "python")
    wait_for_file("*/checkpoints/step-000000010.pt", tmp_path / "cut", proc, timeout=120)
    proc.send_signal(signal.SIGTERM)
    status, out, err = finish(proc)
    assert status == 0 and "streamed through a 1.2 MB buffer" in out, err[-3000:]
    stopped = newest_checkpoint(tmp_path / "cut")
    assert 0 < stopped["batch"] < 40, "not stopped mid-epoch"
    before = snapshot_checkpoints(run_folder(tmp_path / "cut"))
    out = train_here([*cut, "--resume"])
    assert_resumed(out, run_folder(tmp_path / "cut"), before, stopped["step"])
    assert_same_weights(newest_checkpoint(tmp_path / "cut"), weights["stream"])


@pytest.mark.slow
def test_sigusr1_stops_after_a_checkpoint_like_sigterm(tmp_path, uninterrupted):
    """Test that SIGUSR1 (what Slurm sends before the time limit) saves, exits 0, and resumes to
    the uninterrupted weights."""
    proc = start_job(1, [*RUN, "--results_dir", str(tmp_path)], "python")
    wait_for_file("*/checkpoints/step-000000010.pt", tmp_path, proc, timeout=120)
    proc.send_signal(signal.SIGUSR1)
    status, out, err = finish(proc)
    assert status == 0 and "stopped by SIGUSR1" in out, err[-3000:]
    before = snapshot_checkpoints(run_folder(tmp_path))
    out = train_here([*RUN, "--results_dir", str(tmp_path), "--resume"])
    assert_resumed(out, run_folder(tmp_path), before)
    assert_same_weights(newest_checkpoint(tmp_path), uninterrupted)


@pytest.mark.slow
def test_only_the_newest_checkpoints_are_kept(tmp_path):
    """Test that keep_checkpoints prunes the older checkpoints and keeps the newest."""
    train_here([*RUN, "--epochs", "1", "--checkpoint_every", "5", "--keep_checkpoints", "3",
                "--results_dir", str(tmp_path)])
    (run_dir,) = list(tmp_path.iterdir())
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*.pt"))
    assert kept == ["step-000000030.pt", "step-000000035.pt", "step-000000040.pt"]


@pytest.mark.slow
def test_resume_auto_looks_at_the_newest_run_folder_only(tmp_path):
    """Test that `--resume auto` starts afresh when the newest run of the recipe has no
    checkpoint, even if an older run has one."""
    train_here([*RUN, "--epochs", "1", "--results_dir", str(tmp_path)])
    (older,) = list(tmp_path.iterdir())
    newer = tmp_path / "29990101-000000-lenet5"  # a later run that died before its first one
    (newer / "checkpoints").mkdir(parents=True)
    (newer / "config.toml").write_text((older / "config.toml").read_text())
    out = train_here([*RUN, "--epochs", "1", "--max_steps", "2", "--results_dir", str(tmp_path),
                      "--resume", "auto"])
    assert "no checkpoint to resume" in out and "resumed from" not in out


@pytest.mark.slow
def test_resuming_a_run_that_reached_max_steps_takes_no_further_step(tmp_path):
    """Test that `--resume` of a run stopped by `max_steps` keeps its final checkpoint and adds
    none: the step counter stays where max_steps stopped it."""
    limited = [*RUN, "--epochs", "1", "--max_steps", "12", "--results_dir", str(tmp_path)]
    train_here(limited)
    before = newest_checkpoint(tmp_path)
    assert before["step"] == 12
    saved = snapshot_checkpoints(run_folder(tmp_path))
    out = train_here([*limited, "--resume"])
    assert_resumed(out, run_folder(tmp_path), saved, 12, took_steps=False)
    assert_same_weights(newest_checkpoint(tmp_path), before)
