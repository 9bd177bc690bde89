"""Every family's stages keep the loop's guarantees, with real processes: a NaN stops every rank
with status 1 and keeps the last good checkpoint, SIGTERM mid-stage then `--resume` ends bit for
bit where an uninterrupted run ends, `--resume auto` at each stage boundary too; `hvdl eval` on 2
ranks equals one process, and `hvdl encode` writes every row once, in file order."""

import json
import os
import re
import shutil
import signal
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from procs import (
    assert_resumed,
    check_hvdl,
    check_job,
    finish,
    rank_pids,
    run_hvdl,
    run_job,
    snapshot_checkpoints,
    start_job,
    train_here,
    wait_for_file,
)

pytestmark = pytest.mark.slow

# Small runs of each family on 1,200 MNIST digits: (options, the run's step to stop after).
COMMON = ["-m", "hvdl.train", "--train_size", "1200", "--log_every", "5",
          "--checkpoint_every", "10", "--keep_checkpoints", "100"]
RUNS = {
    "cnn": (["--model", "lenet5", "--epochs", "2", "--batch_size", "30"], 30),
    "sae": (["--model", "sae_mnist", "--layers", "0,32", "--sae.lbfgs_iterations", "60"], 20),
    # layer1 ends at step 20: 30 is in layer2
    "stacked_ae": (["--model", "stacked_ae_mnist", "--layers", "0,24,16,0",
                    "--sae.lbfgs_iterations", "20", "--sae.finetune_iterations", "6",
                    "--lr", "0.03", "--batch_size", "60"], 30),
    "rbm": (["--model", "rbm_mnist", "--layers", "0,32", "--batch_size", "30",
             "--rbm.pretrain_epochs", "3"], 50),
    "dbn": (["--model", "dbn_small", "--layers", "0,32,16,0", "--batch_size", "30",
             "--rbm.pretrain_epochs", "2", "--rbm.finetune_epochs", "2",
             "--rbm.finetune_lr", "0.5"], 100),  # pretrain2
    "deep_ae": (["--model", "deep_ae_mnist", "--layers", "0,32,16,8", "--batch_size", "30",
                 "--rbm.pretrain_epochs", "1", "--rbm.pretrain_lr", "0.5", "--rbm.code_lr", "0.01",
                 "--rbm.finetune_epochs", "10", "--rbm.finetune_lr", "0.02",
                 "--rbm.finetune_batch_size", "30"], 130),  # finetune, after 3 × 40 steps
}
# A learning rate no model survives, for the NaN stop (in a minibatch stage of each family);
# near float32's largest for the classifiers and autoencoders whose saturating units keep each
# step's update near the rate (1e30 only reaches costs of 1e33 in 40 steps). sae and stacked_ae
# train by full-batch L-BFGS, whose line search picks its own step: see LBFGS_BLOW_UP.
BLOW_UP = {
    "cnn": ["--lr", "1e30"], "rbm": ["--rbm.pretrain_lr", "1e30"],
    "dbn": ["--rbm.finetune_lr", "1e38"],
    "deep_ae": ["--rbm.finetune_lr", "1e38", "--optimizer", "sgd"],
}
# A weight decay λ whose (λ/2)ΣW² overflows float32 (ΣW² > 6.8 in both models' layers): the
# full-batch L-BFGS cost is inf from the first evaluation after a resume from the given step
# (sae: iteration 20 of 60; stacked_ae: layer2's iteration 10, run step 30).
LBFGS_BLOW_UP = {"sae": (["--sae.lam", "1e38"], 20), "stacked_ae": (["--sae.lam", "1e38"], 30)}
# The rbm, dbn and deep_ae runs on 2 ranks (20 steps an epoch), the rbm by persistent CD, with
# pretraining of 100, 80 and 120 steps and a stop check every 2: SIGTERM goes to rank 1 after
# the first checkpoint (step 10) and lands inside an RBM's pretraining, where each rank's sampling
# noise (and persistent chain) is its own, even on a loaded machine (40 to 60 steps late there).
TWO_RANKS = {"rbm": ["--rbm.persistent", "true", "--rbm.pretrain_epochs", "5"], "dbn": [],
             "deep_ae": ["--rbm.pretrain_epochs", "2"]}
TWO_RANK_OPTIONS = ["--stop_check_every", "2"]
# Average squared test error per example of the short runs (measured: sae 34.5, rbm 33.1,
# deep_ae 39.3) must stay below 0.8 × that of MNIST's mean test image (52.8 × 0.8 = 42.3) and
# below all zeros' (89.3). What the short runs' test accuracy stays above (measured: cnn 0.87,
# stacked_ae 0.51, dbn 0.66; always predicting the most common class gives 0.11). The rates of
# the last stages (stacked_ae's and dbn's fine-tuning, deep_ae's) are raised for that; none of
# them moves the steps where the other tests stop, resume or blow up.
ACCURACY_FLOOR = {"cnn": 0.6, "stacked_ae": 0.3, "dbn": 0.4}


def run_folder(results):
    (run_dir,) = [p for p in results.iterdir() if p.is_dir()]
    return run_dir


def checkpoints(run_dir):
    return sorted((run_dir / "checkpoints").glob("step-*.pt"))


def newest(results):
    return torch.load(checkpoints(run_folder(results))[-1], weights_only=True)


def assert_same_weights(a, b):
    assert (a["stage"], a["step"]) == (b["stage"], b["step"])
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Each family's uninterrupted run folder (one process), trained once for the module."""
    folders = {}
    for name, (options, _) in RUNS.items():
        results = tmp_path_factory.mktemp(f"whole-{name}")
        train_here([*COMMON, *options, "--results_dir", str(results)])
        folders[name] = run_folder(results)
    return folders


@pytest.mark.parametrize("family", list(BLOW_UP))
def test_a_nan_stops_both_ranks_with_status_1_and_keeps_the_last_good_checkpoint(tmp_path,
                                                                                   family):
    """Test that a diverging stage ends 2 ranks with status 1, a line naming the stage and the
    last good checkpoint, which stays complete and finite."""
    options, _ = RUNS[family]
    proc = run_job(2, [*COMMON, *options, *BLOW_UP[family], "--checkpoint_every", "1",
                       "--results_dir", str(tmp_path)], "mpirun", timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-3000:]
    assert text.count("hvdl: error:") == 1, text[-3000:]
    assert "not finite" in text or "became nan" in text or "became inf" in text, text[-3000:]
    found = checkpoints(run_folder(tmp_path))
    assert found and f"last good checkpoint: {found[-1]}" in text, text[-3000:]
    last = torch.load(found[-1], weights_only=True)
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())


@pytest.mark.parametrize("family", list(LBFGS_BLOW_UP))
def test_a_non_finite_lbfgs_cost_stops_both_ranks_and_keeps_the_last_good_checkpoint(
        tmp_path, trained, family):
    """Test that a full-batch L-BFGS stage whose cost becomes inf ends 2 ranks with status 1 and
    one line naming the cost and the last good checkpoint, which stays as it was and finite."""
    options, step = LBFGS_BLOW_UP[family]
    whole = trained[family]
    run_dir = tmp_path / whole.name
    shutil.copytree(whole, run_dir)  # the run as it was when step `step` was saved
    for later in checkpoints(run_dir):
        if int(later.name[5:-3]) > step:
            later.unlink()
    before = snapshot_checkpoints(run_dir)
    proc = run_job(2, [*COMMON, *RUNS[family][0], *options, "--results_dir", str(tmp_path),
                       "--resume", "auto"], "mpirun", timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-3000:]
    assert text.count("hvdl: error:") == 1, text[-3000:]
    assert "cost became inf" in text or "cost became nan" in text, text[-3000:]
    last = run_dir / "checkpoints" / f"step-{step:09d}.pt"
    assert f"last good checkpoint: {last}" in text, text[-3000:]
    assert snapshot_checkpoints(run_dir) == before  # nothing written over, nothing added
    saved = torch.load(last, weights_only=True)
    assert saved["stage"] == ("sae" if family == "sae" else "layer2"), saved["stage"]
    assert all(torch.isfinite(t).all() for t in saved["model"].values())


# cnn: tests/test_resume.py::test_sigterm_mid_epoch_then_resume_gives_the_uninterrupted_weights
@pytest.mark.parametrize("family", ["sae", "stacked_ae", "deep_ae"])
def test_sigterm_mid_stage_then_resume_ends_as_an_uninterrupted_run(tmp_path, trained, family):
    """Test that SIGTERM in the middle of a stage saves, exits 0, and `--resume` ends with the
    uninterrupted run's weights, bit for bit, from the checkpoint it saved."""
    options, stop_after = RUNS[family]
    run = [*COMMON, *options, "--results_dir", str(tmp_path)]
    proc = start_job(1, run, "python")
    wait_for_file(f"*/checkpoints/step-{stop_after:09d}.pt", tmp_path, proc, timeout=300)
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the stopped job did not end")
    assert proc.returncode == 0 and "stopped by SIGTERM" in out, err[-3000:]
    whole = torch.load(checkpoints(trained[family])[-1], weights_only=True)
    stopped = newest(tmp_path)
    assert stopped["step"] + stopped.get("offset", 0) < whole["step"] + whole.get("offset", 0)
    before = snapshot_checkpoints(run_folder(tmp_path))
    out = train_here([*run, "--resume"])
    assert_resumed(out, run_folder(tmp_path), before, stopped["step"] + stopped["offset"])
    assert_same_weights(newest(tmp_path), whole)


@pytest.fixture(scope="module")
def trained_on_two(tmp_path_factory):
    """A family's uninterrupted 2-rank run folder (TWO_RANKS, under mpirun), each trained once
    for the module, when first asked for."""
    folders = {}

    def folder(family):
        if family not in folders:
            results = tmp_path_factory.mktemp(f"two-{family}")
            check_job(2, [*COMMON, *RUNS[family][0], *TWO_RANKS[family], *TWO_RANK_OPTIONS,
                          "--results_dir", str(results)], "mpirun", timeout=600)
            folders[family] = run_folder(results)
        return folders[family]
    return folder


@pytest.mark.parametrize("family", list(TWO_RANKS))
def test_sigterm_to_rank_1_mid_pretraining_then_resume_ends_as_an_uninterrupted_2_rank_run(
        tmp_path, trained_on_two, family):
    """Test that SIGTERM to rank 1 alone while an RBM pretrains stops both ranks with status 0,
    and that `--resume` on 2 ranks (each rank's sampling noise and chain restored) ends with the
    uninterrupted 2-rank run's weights, bit for bit."""
    whole = torch.load(checkpoints(trained_on_two(family))[-1], weights_only=True)
    run = [*COMMON, *RUNS[family][0], *TWO_RANKS[family], *TWO_RANK_OPTIONS, "--results_dir",
           str(tmp_path)]
    proc = start_job(2, run, "mpirun")
    ranks = rank_pids(proc, 2)
    wait_for_file("*/checkpoints/step-000000010.pt", tmp_path, proc, timeout=300)
    os.kill(ranks[1], signal.SIGTERM)
    status, out, err = finish(proc, 300)
    assert status == 0 and out.count("stopped by SIGTERM") == 1, (out + err)[-3000:]
    stopped = newest(tmp_path)
    assert stopped["stage"].startswith("pretrain"), stopped["stage"]
    assert len(stopped["rng"]) == 2 and stopped["rng"][1]["stage"]["noise"] is not None
    before = snapshot_checkpoints(run_folder(tmp_path))
    out = check_job(2, [*run, "--resume"], "mpirun", timeout=600)
    assert_resumed(out, run_folder(tmp_path), before, stopped["step"] + stopped["offset"])
    assert_same_weights(newest(tmp_path), whole)


@pytest.mark.parametrize("family", ["stacked_ae", "dbn", "deep_ae"])
def test_resume_auto_at_each_stage_boundary_ends_as_an_uninterrupted_run(tmp_path, trained,
                                                                         family):
    """Test that a run cut right after any of its stages ends, resumed by `--resume auto`, as the
    uninterrupted run does."""
    whole = trained[family]
    found = [(p, torch.load(p, weights_only=True)["stage"]) for p in checkpoints(whole)]
    ends = [p for (p, stage), (_, after) in zip(found, found[1:]) if stage != after]
    assert len(ends) >= 2, [s for _, s in found]
    final = torch.load(found[-1][0], weights_only=True)
    options, _ = RUNS[family]
    for i, end in enumerate(ends):
        results = tmp_path / f"cut{i}"
        shutil.copytree(whole, results / whole.name)  # the run as it was when `end` was written
        for later in checkpoints(results / whole.name):
            if later.name > end.name:
                later.unlink()
        before = snapshot_checkpoints(results / whole.name)
        out = train_here([*COMMON, *options, "--results_dir", str(results), "--resume", "auto"])
        assert_resumed(out, results / whole.name, before, int(end.name[5:-3]))
        assert_same_weights(newest(results), final)


@pytest.mark.parametrize("family", list(RUNS))
def test_eval_on_two_ranks_equals_one_process(tmp_path, trained, family):
    """Test that `hvdl eval` of the run's checkpoint gives the same figures on 2 ranks as on one
    (a classification report, or the reconstruction error and the RBM's free energy)."""
    ckpt = checkpoints(trained[family])[-1]
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
    assert one["count"] == two["count"] == 10000
    for key, value in one.items():
        if isinstance(value, float):
            assert abs(two[key] - value) < 1e-9 * max(1.0, abs(value)), key
        else:
            assert two[key] == value, key
    if family in ACCURACY_FLOOR:
        predicted = np.asarray(one["confusion"]).sum(0)  # columns: the predicted classes
        assert (predicted > 0).sum() >= 3, predicted  # a trained model, not one or two classes
        assert one["accuracy"] > ACCURACY_FLOOR[family], one["accuracy"]
    else:
        assert torch.load(ckpt, weights_only=True)["data"]["scale"]["kind"] == "unit"
        mean_image, all_zero = baseline_errors()
        assert one["squared_error"] < all_zero, (one["squared_error"], all_zero)
        assert one["squared_error"] < 0.8 * mean_image, (one["squared_error"], mean_image)
    if family == "rbm":
        assert np.isfinite(one["free_energy"])


def baseline_errors():
    """(always predicting MNIST's mean test image, predicting zeros): the average squared error
    per example on MNIST's test set, pixels / 255 as the runs read them."""
    from hvdl.data.formats.mnist import load_mnist, resolve_data_dir

    x = load_mnist(resolve_data_dir(), "test")[0].reshape(10000, -1) / 255.0  # (10000, 784)
    return float(((x - x.mean(0)) ** 2).sum(1).mean()), float((x ** 2).sum(1).mean())


@pytest.mark.parametrize("family", ["sae", "stacked_ae", "rbm", "dbn", "deep_ae"])
def test_encode_writes_every_row_once_in_file_order(tmp_path, trained, family):
    """Test that `hvdl encode` on 2 ranks writes two parts that together are the model's encoding
    of every row, in file order with their labels, and a manifest of them."""
    ckpt = checkpoints(trained[family])[-1]
    out = tmp_path / "codes"
    check_job(2, ["-m", "hvdl.encode", "--checkpoint", str(ckpt), "--out", str(out)], "mpirun")
    manifest = json.loads((out / "manifest.json").read_text())
    assert [p["rank"] for p in manifest["parts"]] == [0, 1]
    assert (manifest["family"], manifest["format"]) == (family, "parquet")
    parts = [pq.read_table(out / p["files"][0]) for p in manifest["parts"]]
    assert [p.num_rows for p in parts] == [p["rows"] for p in manifest["parts"]]
    assert all(p.num_rows > 0 for p in parts) and sum(p.num_rows for p in parts) == 1200
    assert manifest["rows"] == 1200
    codes = np.concatenate([np.column_stack([c.to_numpy() for c in p.drop(["label"]).columns])
                            for p in parts])
    labels = np.concatenate([p.column("label").to_numpy() for p in parts])
    expected, layer = encoded_by_the_model(ckpt, 1200)
    assert manifest["layer"] == layer
    np.testing.assert_array_equal(labels, mnist_train()[1][:1200])
    assert codes.shape == expected.shape
    np.testing.assert_allclose(codes, expected, rtol=0, atol=1e-5)
    assert codes.std(0).max() > 0  # the codes vary with the input


def mnist_train():
    from hvdl.data.formats.mnist import load_mnist, resolve_data_dir

    return load_mnist(resolve_data_dir(), "train")


def encoded_by_the_model(ckpt, rows, layer=None):
    """(codes, layer): the family's encoder of hidden layer `layer` (default: the code or the
    last) applied to the first `rows` training digits scaled by the checkpoint's record, the
    model built from the checkpoint as hvdl/families.py builds it."""
    from hvdl import config as configlib
    from hvdl.families import FAMILIES

    payload = torch.load(ckpt, weights_only=True)
    config = configlib.from_dict(payload["config"])
    family = FAMILIES[config.family]
    model = family.build(config, payload["data"])
    model.load_state_dict(payload["model"])
    model.eval()
    scale = payload["data"]["scale"]
    x = mnist_train()[0][:rows].reshape(rows, -1).astype(np.float32)
    x = (x - np.asarray(scale["shift"], np.float32)) / np.asarray(scale["div"], np.float32)
    layer = layer or family.depth(config)
    with torch.no_grad():
        codes = family.encoder(model, layer)(torch.from_numpy(x).to(next(model.parameters()).dtype))
    return codes.float().numpy(), layer


def test_encode_layer_1_as_npy_gives_the_first_hidden_layer(tmp_path, trained):
    """Test that `hvdl encode --layer 1 --format npy` of a deep autoencoder writes the first
    hidden layer's codes (layers[1] wide, not the code layer's) as .npy with the labels."""
    ckpt = checkpoints(trained["deep_ae"])[-1]
    out = tmp_path / "codes"
    check_hvdl(["encode", "--checkpoint", str(ckpt), "--out", str(out), "--layer", "1",
                "--format", "npy"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["layer"], manifest["format"], manifest["rows"]) == (1, "npy", 1200)
    (part,) = manifest["parts"]
    assert sorted(part["files"]) == ["part-00000.labels.npy", "part-00000.npy"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", *sorted(part["files"])]
    codes = np.load(out / "part-00000.npy")
    expected, _ = encoded_by_the_model(ckpt, 1200, layer=1)
    assert codes.shape == expected.shape == (1200, 32)  # --layers 0,32,16,8
    np.testing.assert_allclose(codes, expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(np.load(out / "part-00000.labels.npy"),
                                  mnist_train()[1][:1200])


def test_encode_of_a_classifier_without_an_encoder_is_bad_input(tmp_path, trained, capfd):
    """Test that `hvdl encode` of a cnn checkpoint exits with status 2 and one line, writing
    nothing."""
    ckpt = checkpoints(trained["cnn"])[-1]
    out = tmp_path / "codes"
    status, _, err = run_hvdl(["encode", "--checkpoint", str(ckpt), "--out", str(out)], capfd)
    assert status == 2, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hvdl: error: "), err
    assert "family 'cnn' has no encoder" in lines[0], lines[0]
    assert not out.exists()


@pytest.mark.parametrize("launcher", ["gloo", "mpi"])
def test_progress_comes_in_whole_lines_under_horovodrun(tmp_path, launcher):
    """Test that under horovodrun (no terminal) progress is whole lines, without carriage
    returns, naming the stage, epoch, step of total, samples/s, time left and cost."""
    proc = run_job(2, ["-m", "hvdl.train", "--train_size", "4000", "--epochs", "1",
                       "--log_every", "5", "--results_dir", str(tmp_path)], launcher,
                   PYTHONUNBUFFERED="1")  # as job scripts often set: a write per print piece
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    assert "\r" not in text
    tag = re.compile(r"\[\d+(,\d+)?\]<std(out|err)>:")  # Gloo: [0]; MPI: [1,0]
    torn = [line for line in text.splitlines() if tag.search(line, 1)]
    assert not torn, torn[:3]  # the launcher's tag only ever starts a line
    lines = [line for line in proc.stdout.splitlines() if "train epoch 1: step" in line]
    assert lines and all("samples/s" in line and " left, cost " in line for line in lines)
    assert lines[-1].rstrip().endswith(tuple("0123456789")) and "31/31 (100%)" in lines[-1]
