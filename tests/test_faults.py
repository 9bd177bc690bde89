"""A non-finite loss in one process: status 1, one line naming the last good checkpoint, which
stays finite. The same on 2 ranks, and a rank killed, under every engine and launcher:
tests/test_engines.py; a host lost: tests/test_multihost.py."""

import pytest
import torch

from procs import run_hvdl, train_here


def nan_run(results, capture):
    """(status, stdout, stderr) of a run that trained 10 good SGD steps, resumed at a learning
    rate that overflows the weights."""
    base = ["-m", "hvdl.train", "--optimizer", "sgd", "--train_size", "2000", "--batch_size",
            "50", "--epochs", "1", "--results_dir", str(results)]
    train_here([*base, "--lr", "0.05", "--max_steps", "10"])
    return run_hvdl(["train", *base[2:], "--resume", "--lr", "1e10", "--log_every", "1",
                     "--checkpoint_every", "1"], capture, HVDL_THREADS="1")


def assert_checkpoints_finite(results):
    (run_dir,) = list(results.iterdir())
    saved = sorted((run_dir / "checkpoints").glob("step-*.pt"))
    assert saved, "the last good checkpoint was deleted"
    for path in saved:
        model = torch.load(path, weights_only=True)["model"]
        assert all(torch.isfinite(t).all() for t in model.values()), f"{path} is not finite"
    return saved[-1]


@pytest.mark.slow
def test_non_finite_loss_exits_1_and_keeps_the_last_good_checkpoint(tmp_path, capfd):
    """Test that a NaN loss ends the run with status 1, one line naming the last good checkpoint."""
    status, _, err = nan_run(tmp_path, capfd)
    assert status == 1, err[-3000:]
    line = err.strip().splitlines()[-1].split("\r")[-1]
    assert line.startswith("hvdl: error: train loss became nan") or "not finite" in line, line
    newest = assert_checkpoints_finite(tmp_path)
    assert f"last good checkpoint: {newest}" in line
