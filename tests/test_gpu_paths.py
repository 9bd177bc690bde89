"""Paths that matter on a GPU, checked on the CPU: the rank's GPU is made current before the
collective engine starts, and an RBM checkpoint whose sampling noise came from another kind of
device is refused in one line instead of crashing in the generator."""

import pytest
import torch

from hvdl import dist
from hvdl.dist.base import SingleEngine
from procs import run_hvdl, train_here


def test_the_ranks_gpu_is_current_before_the_engine_starts(monkeypatch):
    """Test that dist.init makes cuda:<launcher's local rank> current before it constructs the
    engine (a CUDA-aware MPI binds to the device current at its start)."""
    events = []

    class Recording(SingleEngine):
        def __init__(self, environ):
            events.append("engine")
            super().__init__(environ)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: events.append(str(device)))
    monkeypatch.setitem(dist.ENGINES, "single", Recording)
    monkeypatch.setenv("SLURM_LOCALID", "1")  # a task's local rank, outside a job step
    monkeypatch.delenv("SLURM_STEP_ID", raising=False)
    dist.shutdown()
    try:
        dist.init(threads=1, backend="single")
    finally:
        dist.shutdown()
    assert events[:2] == ["cuda:1", "engine"], events


@pytest.mark.slow
def test_an_rbm_checkpoint_with_another_devices_noise_is_refused_in_one_line(tmp_path, capfd):
    """Test that resuming an RBM stage whose saved sampling noise is a CUDA generator's (16
    bytes) on the CPU exits 2 with one line naming both devices, leaving the checkpoint as it
    was."""
    run = ["-m", "hvdl.train", "--model", "rbm_mnist", "--layers", "0,16", "--train_size", "600",
           "--batch_size", "30", "--rbm.pretrain_epochs", "3", "--checkpoint_every", "5",
           "--keep_checkpoints", "100", "--results_dir", str(tmp_path)]
    train_here(run)
    (mid,) = tmp_path.glob("*/checkpoints/step-000000005.pt")  # inside the stage's first epoch
    state = torch.load(mid, weights_only=True)
    assert len(state["rng"][0]["stage"]["noise"]) == 5056  # a CPU generator's
    state["rng"][0]["stage"]["noise"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA one's
    torch.save(state, mid)
    written = mid.read_bytes()
    status, _, err = run_hvdl(["train", *run[2:], "--resume", str(mid)], capfd)
    assert status == 2, err[-2000:]
    (line,) = err.strip().splitlines()
    assert line == ("hvdl: error: pretrain1's sampling noise was drawn on CUDA and this run "
                    "samples on CPU; allowed: resume an RBM stage on the kind of device that "
                    "wrote its checkpoint (or finish the stage there and resume after it)")
    assert mid.read_bytes() == written
