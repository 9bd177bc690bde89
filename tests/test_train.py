"""End-to-end training with real Horovod jobs: equivalence across world sizes and run folders."""

import json

import pytest
import torch

from procs import check_hvdl, check_job

TINY = ["--train_size", "2000", "--epochs", "1", "--max_steps", "4", "--log_every", "2"]


def final_weights(results_dir):
    """The model weights in the newest checkpoint of the single run under `results_dir`."""
    (run_dir,) = [p for p in results_dir.iterdir() if p.is_dir()]
    newest = sorted((run_dir / "checkpoints").glob("step-*.pt"))[-1]
    return torch.load(newest, weights_only=True)["model"]


def assert_learned(report, floor):
    """A classifier's report after a short run: its predictions (the confusion matrix's columns)
    spread over at least 3 classes, each with 1% of the examples, and accuracy above `floor`."""
    predicted = [sum(column) for column in zip(*report["confusion"])]
    assert sum(n >= report["count"] / 100 for n in predicted) >= 3, predicted
    assert report["accuracy"] > floor, report["accuracy"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The run folder and stdout of a short horovodrun -np 2 training, run once for the module."""
    results = tmp_path_factory.mktemp("tiny")
    stdout = check_job(2, ["-m", "hvdl.train", *TINY, "--results_dir", str(results)])
    (run_dir,) = list(results.iterdir())
    return run_dir, stdout


@pytest.mark.slow
def test_two_rank_training_writes_a_complete_run_folder(tiny_run):
    """Test that a short horovodrun -np 2 training writes config, metadata, metrics, events and
    checkpoints."""
    run_dir, stdout = tiny_run
    assert run_dir.name.endswith("-lenet5")
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.toml", "metadata.json", "metrics.json", "checkpoints"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["world_size"] == 2
    assert [r["rank"] for r in meta["inventory"]] == [0, 1]
    assert set(meta["versions"]) >= {"torch", "horovod", "mpi4py"}
    assert "commit" in meta["git"]
    result = json.loads((run_dir / "metrics.json").read_text())
    test = result["final"]
    assert len(test["confusion"]) == 10 and test["count"] == 10000
    assert_learned(test, 0.25)  # 4 steps of 128 reach 0.39; chance is 0.1
    saved = torch.load(next((run_dir / "checkpoints").glob("*.pt")), weights_only=True)
    assert saved["config"]["recipe"] == "lenet5" and saved["step"] == 4
    assert stdout.count("hvdl: lenet5") == 1  # rank 0 alone prints


@pytest.mark.slow
def test_evaluation_over_two_ranks_equals_one_process(tmp_path, tiny_run):
    """Test that the test-set report aggregated over 2 ranks equals the 1-process report, and
    the training run's own final test figures."""
    run_dir, _ = tiny_run
    ckpt = next((run_dir / "checkpoints").glob("*.pt"))
    reports = {}
    for np_ in (1, 2):  # each engine and launcher: test_engines.py
        out = tmp_path / f"report{np_}.json"
        command = ["--checkpoint", str(ckpt), "--out", str(out)]
        if np_ == 1:
            check_hvdl(["eval", *command])
        else:
            check_job(2, ["-m", "hvdl.evaluate", *command], "mpirun")
        reports[np_] = json.loads(out.read_text())
    one, two = reports[1], reports[2]
    for key in ("confusion", "accuracy", "precision", "recall", "f1", "macro_f1", "count"):
        assert two[key] == one[key], key
    assert abs(two["cost"] - one["cost"]) < 1e-9
    final = json.loads((run_dir / "metrics.json").read_text())["final"]
    assert one["confusion"] == final["confusion"] and one["accuracy"] == final["accuracy"]
    assert_learned(one, 0.25)  # the trained model, not one constant class
