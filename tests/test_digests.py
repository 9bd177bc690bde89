"""launch/digests.py, the regression check for a restructuring: a run folder's digest follows
its weights, optimizer state, stages and metrics, and ignores clock and memory readings."""

import importlib.util
import json

import torch

from procs import ROOT

spec = importlib.util.spec_from_file_location("digests", ROOT / "launch" / "digests.py")
digests = importlib.util.module_from_spec(spec)
spec.loader.exec_module(digests)


def run_folder(path, weight=1.0, momentum=0.5, stage=2.0, cost=0.25, seconds=1.0, rss=400.0):
    """A finished run folder as hvdl writes one, with the given values."""
    (path / "checkpoints").mkdir(parents=True)
    (path / "stages").mkdir()
    torch.save({"stage": "finetune", "step": 20, "epoch": 1, "batch": 0,
                "model": {"w": torch.full((2, 3), weight), "b": torch.zeros(3)},
                "optimizer": {"state": {0: {"momentum_buffer": torch.tensor(momentum)}},
                              "param_groups": []}},
               path / "checkpoints" / "step-000000020.pt")
    torch.save({"model": {"w": torch.tensor([stage])}}, path / "stages" / "pretrain1.pt")
    (path / "metrics.json").write_text(json.dumps({
        "first_step_s": seconds, "peak_rss_mb": [rss],
        "train": [{"epoch": 1, "train_cost": cost, "seconds": seconds, "samples_per_s": 9.0}]}))
    return path


def test_a_digest_ignores_clocks_and_memory_and_follows_everything_else(tmp_path):
    """Test that two runs differing only in times and resident memory have one digest, and that
    a changed weight, optimizer state, finished stage or cost each changes it."""
    base = digests.digest(run_folder(tmp_path / "a"))
    assert digests.digest(run_folder(tmp_path / "b", seconds=7.5, rss=512.0)) == base
    changed = {"weight": {"weight": 1.0 + 2**-20}, "optimizer": {"momentum": 0.25},
               "stage": {"stage": 3.0}, "metric": {"cost": 0.2500001}}
    for name, values in changed.items():
        assert digests.digest(run_folder(tmp_path / name, **values)) != base, name
