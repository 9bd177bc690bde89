"""The whole training loop of every minibatch family with host synchronisation forbidden.

    python -m pytest -m gpu tests/test_gpu_loop.py      # on a CUDA machine
    python -m pytest tests/test_gpu_loop.py             # here: the same loop, syncs emulated

The README promises that a training step never waits for the host: the loss stays on the
device and is read every `log_every` steps and at an epoch's end. Each case trains a small
recipe in-process through hvdl.fit (one process, `--dist.backend single`) with `log_every`
larger than an epoch and no mid-epoch checkpoints, so an epoch's only read is after its last
step. hvdl.loop.epochs.train_epoch is wrapped so that the check is on from the end of an epoch's
first step (which allocates optimizer state) until the end of the step before a read: all of
the steps in between (batch slicing, the rate, the family's step, the loop's sums, the stage's
and checkpointer's hooks) run under it.

On a GPU the check is CUDA's own, `torch.cuda.set_sync_debug_mode("error")`, which raises on
any synchronising call. Without CUDA the same loop runs on the CPU with the host reads that
would synchronise on a GPU (`float`, `int`, `bool`, `.item()`, `.tolist()`, `.cpu()`,
`.numpy()`, `new_tensor`) made to raise when hvdl's own code makes them inside the window:
that proves the window's bounds (the loop's legitimate reads fall outside it) and catches a
read reintroduced in hvdl's steps, though not a sync made inside torch (the GPU half's job).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest
import torch

import hvdl
from hvdl.loop import epochs

ROWS, TEST_ROWS, BATCH, EPOCHS = 600, 200, 60, 2  # 10 steps an epoch, 2 epochs a stage
STEPS = ROWS // BATCH
NEVER = 10**6  # log_every: no read inside an epoch but the one after its last step

SMALL_RBMS = {"pretrain_epochs": EPOCHS, "finetune_epochs": EPOCHS}
# (id, recipe, options, the minibatch stages it runs)
CASES = [
    ("cnn", "lenet5_fast", {"epochs": EPOCHS}, ["train"]),  # bf16, Adam, onecycle
    ("sae-sgd", "sae_mnist", {"optimizer": "sgd", "epochs": EPOCHS}, ["sae"]),
    ("sae-adam", "sae_mnist", {"optimizer": "adam", "epochs": EPOCHS}, ["sae"]),
    ("rbm", "rbm_mnist", {"layers": [784, 100], "rbm": SMALL_RBMS}, ["pretrain1"]),
    ("rbm-persistent", "rbm_mnist",
     {"layers": [784, 100], "rbm": {**SMALL_RBMS, "persistent": True}}, ["pretrain1"]),
    ("dbn", "dbn_small", {"layers": [0, 64, 32, 0], "rbm": SMALL_RBMS},
     ["pretrain1", "pretrain2", "finetune"]),
    ("deep_ae", "deep_ae_mnist", {"layers": [784, 64, 32, 8], "rbm": SMALL_RBMS},
     ["pretrain1", "pretrain2", "pretrain3", "finetune"]),
]
LABELLED = {"cnn", "dbn"}  # the families trained with labels

# The host reads that wait for the device when the tensor is on a GPU.
HOST_READS = ["__float__", "__int__", "__bool__", "item", "tolist", "cpu", "numpy",
              "new_tensor"]


class SyncCheck:
    """Switches the check on and off and counts, per stage, the steps run wholly under it."""

    def __init__(self, cuda: bool):
        self.cuda, self.on, self.checked = cuda, False, {}

    def switch(self, on: bool) -> None:
        if self.cuda:
            torch.cuda.set_sync_debug_mode("error" if on else "default")
        self.on = on


def checked_loop(check: SyncCheck, monkeypatch) -> None:
    """train_epoch (hvdl/loop/epochs.py) under `check`: on after each step whose next one
    makes no read."""
    real = epochs.train_epoch

    def train_epoch(stage, optimizer, shard, schedule, *, config, after_step=None, **kw):
        assert config.log_every == NEVER and config.checkpoint_every == 0

        def hook(batch: int, step: int) -> None:
            if after_step is not None:
                after_step(batch, step)  # the checkpointer's: a stop check, no checkpoint
            if check.on:  # this whole step ran under the check
                check.checked[stage.name] = check.checked.get(stage.name, 0) + 1
            # the loop ends and reads its sums (max_steps, the epoch's end), or the next step
            # reads the loss (`log_every`, the epoch's last batch)
            ends = bool(config.max_steps) and step >= config.max_steps
            reads = batch + 1 >= shard.steps or (batch + 1) % config.log_every == 0
            check.switch(not ends and not reads)

        try:
            return real(stage, optimizer, shard, schedule, config=config, after_step=hook, **kw)
        finally:
            check.switch(False)

    monkeypatch.setattr(epochs, "train_epoch", train_epoch)


def emulate_syncs(check: SyncCheck, monkeypatch) -> None:
    """On the CPU: hvdl's host reads raise while the check is on, as CUDA's would."""
    for name in HOST_READS:
        real = getattr(torch.Tensor, name)

        def read(self, *args, _real=real, _name=name, **kw):
            caller = sys._getframe(1)
            where = caller.f_globals.get("__name__", "")
            if check.on and where.startswith("hvdl"):
                raise RuntimeError(f"host sync: Tensor.{_name} called in a training step at "
                                   f"{caller.f_code.co_filename}:{caller.f_lineno}")
            return _real(self, *args, **kw)

        monkeypatch.setattr(torch.Tensor, name, read)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict[str, dict[str, str]]:
    """{"labelled"/"unlabelled": data options} for 600 MNIST training and 200 test digits."""
    from hvdl.data.formats.mnist import load_mnist, resolve_data_dir

    folder = tmp_path_factory.mktemp("digits")
    for split, rows in (("train", ROWS), ("test", TEST_ROWS)):
        images, labels = load_mnist(resolve_data_dir(), split)
        np.save(folder / f"{split}-x.npy", images[:rows].reshape(rows, -1))  # (rows, 784) uint8
        np.save(folder / f"{split}-y.npy", labels[:rows])
    plain = {"path": str(folder / "train-x.npy"), "test_path": str(folder / "test-x.npy"),
             "scale": "unit"}
    return {"unlabelled": plain,
            "labelled": {**plain, "label": str(folder / "train-y.npy"),
                         "test_label": str(folder / "test-y.npy")}}


def train(case: tuple[str, str, dict[str, Any], list[str]], data: dict[str, dict[str, str]],
          results, check: SyncCheck, monkeypatch) -> None:
    """Train the case in this process under `check`; every stage checked on all but the first
    and last step of each epoch."""
    name, recipe, options, stages = case
    labelled = name in LABELLED
    data_options = dict(data["labelled" if labelled else "unlabelled"])
    if name == "cnn":
        data_options["shape"] = [1, 28, 28]
    checked_loop(check, monkeypatch)
    result = hvdl.fit(recipe, data=data_options, dist={"backend": "single"}, train_size=0,
                      batch_size=BATCH, log_every=NEVER, checkpoint_every=0, filters_every=0,
                      progress="none", results_dir=str(results), **options)
    assert check.on is False
    assert check.checked == {stage: EPOCHS * (STEPS - 2) for stage in stages}
    assert result.checkpoint is not None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_training_steps_make_no_host_sync_on_the_gpu(case, digits, tmp_path, monkeypatch):
    """Test that every step of a family's whole loop on the GPU, but an epoch's first and the
    one before a read, runs under torch.cuda.set_sync_debug_mode("error") without raising."""
    try:
        train(case, digits, tmp_path, SyncCheck(cuda=True), monkeypatch)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available: the GPU test runs")
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_training_steps_make_no_host_read_on_the_cpu(case, digits, tmp_path, monkeypatch):
    """Test that the same loop on the CPU makes no host read from hvdl's code inside the window
    the GPU test checks, and that the loop's own reads fall outside it."""
    check = SyncCheck(cuda=False)
    emulate_syncs(check, monkeypatch)
    train(case, digits, tmp_path, check, monkeypatch)
