"""`hvdl report`: run folders rendered as Markdown tables, one run or a comparison of several."""

import json

import pytest

from hvdl import report

META = {"argv": ["hvdl/train.py", "--model", "lenet5"], "world_size": 2, "controller": "mpi",
        "started": "2026-11-21T00:00:00+0000", "hosts": ["node1"], "platform": "Linux",
        "inventory": [{"device": "cpu", "threads": 1}] * 2,
        "git": {"commit": "0123456789abcdef", "dirty": False}, "versions": {"torch": "2.13.0"}}


def run_folder(path, metrics, sync="allreduce", every=1):
    """A run folder as `hvdl.train` writes it: metadata, metrics and the resolved config."""
    path.mkdir()
    (path / "metadata.json").write_text(json.dumps(META))
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "config.toml").write_text(f'recipe = "lenet5"\nlr = 0.002\n\n[perf]\n'
                                      f'sync = "{sync}"\nsync_every = {every}\n')
    return path


def cnn_metrics(accuracies):
    return {"train": [{"epoch": i + 1, "train_cost": 0.5, "seconds": 3.0, "samples_per_s": 2e4,
                       "test": {"cost": 0.1, "accuracy": a}} for i, a in enumerate(accuracies)],
            "final": {"accuracy": accuracies[-1]}}


def test_a_classifier_run_shows_its_test_accuracy_per_epoch(tmp_path):
    """Test that a CNN run's table has the cost, accuracy, time and throughput of each epoch."""
    text = report.summarise(run_folder(tmp_path / "run", cnn_metrics([0.9845, 0.9911])))
    assert "| train epoch | train cost | test cost | test accuracy | seconds | samples/s |" in text
    assert "| 2 | 0.5000 | 0.1000 | 99.11% | 3.0 | 20000 |" in text
    assert "Training time over all epochs: 6.0 s." in text
    assert "on 2 rank(s) (mpi controller)" in text


def test_an_rbm_run_shows_the_figures_it_records(tmp_path):
    """Test that RBM pretraining epochs (no cost, no test set) get their own columns."""
    epoch = {"epoch": 1, "seconds": 3.3, "momentum": 0.5, "train_recon": 14.948,
             "heldout_recon": 5.24, "free_energy_gap": -0.048}
    text = report.summarise(run_folder(tmp_path / "run", {"pretrain1": [epoch], "final": {}}))
    assert ("| pretrain1 epoch | train recon. | held-out recon. | free-energy gap | seconds |"
            in text)
    assert "| 1 | 14.948 | 5.240 | -0.048 | 3.3 |" in text


def test_full_batch_stages_count_in_the_training_time(tmp_path):
    """Test that L-BFGS stages (records with iterations, no epochs) add their seconds, once."""
    lbfgs = {"iterations": 400, "cost": 11.6, "seconds": 899.5}
    sae = report.summarise(run_folder(tmp_path / "sae", {"final": lbfgs}))
    assert "Training time over all epochs: 899.5 s." in sae
    stacked = {"stages": {"softmax": {**lbfgs, "seconds": 4.5}}, "final": {"seconds": 9.0},
               "finetune": [{"epoch": 1, "seconds": 2.0}]}
    assert "Training time over all epochs: 6.5 s." in report.summarise(
        run_folder(tmp_path / "stacked", stacked))


def test_compare_puts_each_run_on_one_row_with_the_settings_asked_for(tmp_path, capsys):
    """Test that `--compare` lists the chosen config keys, the accuracy curve and the time."""
    a = run_folder(tmp_path / "a", cnn_metrics([0.98, 0.99]))
    b = run_folder(tmp_path / "b", cnn_metrics([0.97, 0.985]), sync="average", every=4)
    assert report.main(["--compare", "perf.sync,perf.sync_every", str(a), str(b)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| a")
            or line.startswith("| b")]
    assert rows == ["| a | 2 | allreduce | 1 | 98.00, 99.00 | 99.00% | 6.0 |",
                    "| b | 2 | average | 4 | 97.00, 98.50 | 98.50% | 6.0 |"]


@pytest.mark.parametrize("args, needle", [
    (["--compare", "perf.nope"], "no config key 'perf.nope'"),
    ([], "has no metrics.json"),
])
def test_bad_input_is_one_line_and_status_2(tmp_path, capsys, args, needle):
    """Test that an unknown key or a folder that is not a run ends with one line, status 2."""
    good = run_folder(tmp_path / "run", cnn_metrics([0.99]))
    folder = good if args else tmp_path
    assert report.main([*args, str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err
