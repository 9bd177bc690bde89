"""Entry points answer bad input with one line and exit status 2, leaving no files behind."""

import re
import subprocess
import sys

import pytest

from baddata import DATA_CASES, DEFAULTS
from procs import BIN, ROOT, check_hvdl, job_env, run_hvdl, run_job, train_here


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=job_env(), capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("argv, words", [
    (["--epoch", "3"], "unknown config key 'epoch'"),
    (["--model", "nope"], "unknown recipe 'nope'"),
    (["--lr", "-1"], "'lr' must be > 0"),
])
def test_config_errors_exit_2_with_one_line(tmp_path, argv, words):
    """Test that a config error prints one line naming the key and exits with status 2."""
    proc = run_cli("-m", "hvdl.train", *argv, "--results_dir", str(tmp_path))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], proc.stderr
    assert not any(tmp_path.iterdir())


def test_missing_dataset_says_how_to_get_it(tmp_path):
    """Test that a missing MNIST folder names the file and the fetch command, and writes nothing."""
    results = tmp_path / "runs"
    proc = run_cli("-m", "hvdl.train", "--data_dir", str(tmp_path / "empty"),
                   "--results_dir", str(results))
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "hvdl fetch mnist" in line and "train-images" in line
    assert not results.exists() or not any(results.iterdir())


@pytest.mark.slow
def test_bad_input_on_two_ranks_prints_once(tmp_path):
    """Test that under horovodrun -np 2 only rank 0 reports the error and the job exits non-zero."""
    proc = run_job(2, ["-m", "hvdl.train", "--data_dir", str(tmp_path / "empty"),
                       "--results_dir", str(tmp_path / "runs")])
    assert proc.returncode != 0
    assert (proc.stdout + proc.stderr).count("hvdl fetch mnist") == 1


HVDL = BIN / "hvdl"  # the console script `pip install` made for `hvdl.cli:main`


def hvdl_command(entry):
    """`hvdl` by the installed console script ("script") or by `python -m hvdl` ("module")."""
    return [str(HVDL)] if entry == "script" else [sys.executable, "-m", "hvdl"]


@pytest.mark.parametrize("entry", ["script", "module"])
def test_hvdl_command_lists_subcommands(entry):
    """Test that `hvdl` with an unknown subcommand or none names all seven in one line, exit 2."""
    for args, given in ((["frobnicate", "--model", "lenet5"], "'frobnicate'"), ([], "nothing")):
        proc = subprocess.run([*hvdl_command(entry), *args], cwd=ROOT, env=job_env(),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        found = re.fullmatch(rf"hvdl: error: unknown command {given}; allowed: ([a-z, ]+)"
                             r"( \(.*\))?\n", proc.stderr)
        assert found and sorted(found.group(1).split(", ")) == sorted(DISPATCH), proc.stderr


# Each subcommand given an option no module has: one line of stderr, that module's own.
DISPATCH = {
    "train": "hvdl: error: unknown config key 'bad_option'",
    "eval": "hvdl eval: error: the following arguments are required: --checkpoint;",
    "encode": "hvdl encode: error: the following arguments are required: --checkpoint, --out",
    "data": "hvdl data: error: the following arguments are required: command",
    "bench": "hvdl bench: error: unrecognized arguments: --bad-option",
    "report": "hvdl report: error: the following arguments are required: runs",
    "fetch": "hvdl fetch: error: the following arguments are required: dataset",
}


@pytest.mark.slow
def test_each_hvdl_subcommand_reaches_its_own_module():
    """Test that `hvdl train|eval|encode|data|bench|report|fetch` each run their module's parser
    (its own one-line error, exit 2, no output), by the console script or python -m hvdl."""
    procs = {}
    # Both entries are hvdl.cli.main (test_hvdl_command_lists_subcommands): each command is run
    # by one of them, all at once, since most of each is importing torch.
    for name, entry in zip(DISPATCH, ["script", "module"] * 4):
        procs[name] = subprocess.Popen([*hvdl_command(entry), name, "--bad-option"], cwd=ROOT,
                                       env=job_env(), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 2 and err.count("\n") == 1 and DISPATCH[name] in err, (name, err)
        assert not out, (name, out)


@pytest.mark.parametrize("backend, words", [
    ("auto", "the mpi engine sees one; allowed: srun --mpi=pmix"),  # auto: mpi under srun
    ("horovod", "the horovod engine sees one; this Horovod was probably built without MPI"),
    ("single", "the single engine sees one; allowed: dist.backend auto, mpi, torch or horovod"),
])
def test_launcher_with_more_tasks_than_the_engine_sees_is_an_error(tmp_path, backend, words):
    """Test that srun announcing 2 tasks to an engine of size 1 fails with the reason."""
    proc = subprocess.run(
        [sys.executable, "-m", "hvdl.train", "--dist.backend", backend, "--results_dir",
         str(tmp_path)], cwd=ROOT,
        env=job_env(SLURM_NTASKS="2", SLURM_STEP_ID="0", SLURM_PROCID="0"),
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "the launcher started 2 tasks (SLURM_NTASKS=2)" in line and words in line, line
    assert not any(tmp_path.iterdir())


def sae_checkpoint(folder):
    """A checkpoint written for another model (family sae): what `--resume` must refuse."""
    import torch

    from hvdl import config as configlib

    path = folder / "sae.pt"
    torch.save({"model": {"W": torch.zeros(2, 2)}, "stage": "layer1", "epoch": 1, "step": 1,
                "config": configlib.to_dict(configlib.load("sae_mnist"))}, path)
    return path


def truncated_checkpoint(folder):
    path = sae_checkpoint(folder)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def corrupt_mnist(folder):
    """A data folder whose training images file is cut short (the other three are intact)."""
    data = folder / "data"
    data.mkdir()
    source = ROOT / "data" / "mnist"
    for name in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        (data / name).symlink_to(source / name)
    images = (source / "train-images-idx3-ubyte.gz").read_bytes()
    (data / "train-images-idx3-ubyte.gz").write_bytes(images[:len(images) // 3])
    return data


def a_file(folder):
    path = folder / "taken"
    path.write_text("a file, not a folder\n")
    return path


# case: (argv given a scratch folder, words the one line must hold); results/bad_input.md lists them
BAD_INPUT = {
    "mistyped-value": (lambda t: ["--epochs", "three"], "'epochs' must be an integer, got 'three'"),
    "zero-hidden-units": (lambda t: ["--model", "sae_mnist", "--layers", "784,0"],
                          "'layers' needs unit counts > 0"),
    "batch-larger-than-shard": (lambda t: ["--train_size", "100", "--batch_size", "200"],
                                "'batch_size' is 200, larger than a shard of 100 examples"),
    "train-size-beyond-data": (lambda t: ["--train_size", "70000"],
                               "'train_size' is 70000, the training set has 60000"),
    "corrupt-data-file": (lambda t: ["--data_dir", str(corrupt_mnist(t))],
                          "train-images-idx3-ubyte.gz: corrupt or truncated gzip data"),
    "checkpoint-of-another-model": (lambda t: ["--resume", str(sae_checkpoint(t))],
                                    "is for family 'sae', this run has 'cnn'"),
    "truncated-checkpoint": (lambda t: ["--resume", str(truncated_checkpoint(t))],
                             "is truncated or corrupt"),
    "missing-checkpoint": (lambda t: ["--resume", str(t / "nope.pt")], "nope.pt does not exist"),
    "unwritable-results-folder": (lambda t: ["--results_dir", str(a_file(t) / "runs")],
                                  "is not writable (Not a directory)"),
    "elastic-without-elastic-launcher": (lambda t: ["--elastic"],
                                         "'elastic' is true but the job was started without"),
    "elastic-for-another-family": (
        lambda t: ["--model", "stacked_ae_mnist", "--elastic", "--optimizer", "sgd"],
        "allowed: elastic training for cnn, sae, rbm, dbn, deep_ae only"),
    "elastic-with-lbfgs": (lambda t: ["--model", "sae_mnist", "--elastic"],
                           "is true with optimizer 'lbfgs'"),
    "elastic-with-parameter-averaging": (
        lambda t: ["--elastic", "--perf.sync", "average", "--perf.sync_every", "4"],
        "allowed: perf.sync allreduce, perf.sync_every 1, perf.backward_passes_per_step 1"),
    "finetune-batch-larger-than-shard": (
        lambda t: ["--model", "dbn_small", "--train_size", "1000", "--rbm.finetune_batch_size",
                   "5000"], "'rbm.finetune_batch_size' is 5000, larger than a shard of 1000"),
    "pretrained-stack-missing": (
        lambda t: ["--model", "dbn_small", "--rbm.pretrained", str(t / "nowhere")],
        "stages/pretrain1.pt does not exist; allowed: a run folder whose stages/ hold "
        "pretrain1.pt, pretrain2.pt"),
    "unknown-engine": (lambda t: ["--dist.backend", "nccl"],
                       "'dist.backend' is 'nccl'; allowed: auto, horovod, mpi, torch, single"),
    "hooks-without-horovod": (
        lambda t: ["--perf.grad_sync", "hooks", "--dist.backend", "mpi"],
        "'perf.grad_sync' is 'hooks' and the mpi engine has no per-tensor hook optimizer; "
        "allowed: dist.backend horovod"),
    "timeline-without-horovod": (
        lambda t: ["--perf.timeline", "--dist.backend", "single"],
        "'perf.timeline' is true and the single engine has no Horovod timeline"),
    "elastic-without-horovod": (lambda t: ["--elastic", "--dist.backend", "torch"],
                                "'elastic' is true and the torch engine has no elastic training"),
    "fp16-without-horovod": (
        lambda t: ["--perf.fp16_compression", "--dist.backend", "mpi"],
        "'perf.fp16_compression' is true and the mpi engine has no fp16 compression"),
    "pretrained-for-a-single-rbm": (
        lambda t: ["--model", "rbm_mnist", "--rbm.pretrained", str(t)],
        "'rbm.pretrained' is set for family 'rbm'; allowed: families dbn and deep_ae"),
    **{f"data: {case}": (lambda t, make=make: [*DEFAULTS, *make(t)], words)
       for case, (make, words) in DATA_CASES.items()},
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_with_one_line_and_leaves_no_files(tmp_path, case, capfd):
    """Test that each bad-input case prints one line naming the problem, exits 2, writes nothing
    (`hvdl train` run in this process; `hvdl train` as a process of its own prints the same:
    the cases run so in test_a_bad_input_case_as_its_own_process_is_the_same_line)."""
    make_argv, words = BAD_INPUT[case]
    argv = make_argv(tmp_path)
    results = tmp_path / "runs"
    if "--results_dir" not in argv:
        argv += ["--results_dir", str(results)]
    status, _, stderr = run_hvdl(["train", *argv, "--max_steps", "1"], capfd)
    assert status == 2, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hvdl: error: "), stderr
    assert words in lines[0], lines[0]
    assert not results.exists() or not any(results.iterdir())


@pytest.mark.parametrize("case", ["train-size-beyond-data", "hooks-without-horovod",
                                  "data: ragged row"])
def test_a_bad_input_case_as_its_own_process_is_the_same_line(tmp_path, case):
    """Test that `python -m hvdl.train` with bad input, a process of its own, exits 2 with the one
    line the in-process cases see (a case of the config, of the engine and of the data)."""
    make_argv, words = BAD_INPUT[case]
    results = tmp_path / "runs"
    proc = run_cli("-m", "hvdl.train", *make_argv(tmp_path), "--results_dir", str(results),
                   "--max_steps", "1")
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hvdl: error: ") and words in lines[0], \
        proc.stderr
    assert not results.exists() or not any(results.iterdir())


@pytest.mark.slow
def test_more_ranks_than_samples_is_reported_once_by_rank_0(tmp_path):
    """Test that 2 ranks for 1 example is bad input: rank 0 says so once, the job exits non-zero."""
    proc = run_job(2, ["-m", "hvdl.train", "--train_size", "1", "--results_dir",
                       str(tmp_path / "runs")], "mpirun")
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert text.count("hvdl: error:") == 1, text[-3000:]
    assert "1 examples cannot be shared by 2 ranks; allowed: at most 1 ranks" in text
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_user_data_with_fewer_rows_than_ranks_is_one_line_from_rank_0(tmp_path):
    """Test that a 1-row NPY file on 2 ranks under mpirun is bad input: one line from rank 0,
    status 2, no run folder."""
    import numpy as np

    np.save(tmp_path / "x.npy", np.ones((1, 4), dtype=np.float32))
    proc = run_job(2, ["-m", "hvdl.train", *DEFAULTS, "--data.path", str(tmp_path / "x.npy"),
                       "--results_dir", str(tmp_path / "runs")], "mpirun", timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-3000:]
    assert text.count("hvdl: error:") == 1, text[-3000:]
    assert "1 examples cannot be shared by 2 ranks; allowed: at most 1 ranks" in text
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def shapes_csv(path, rows, seed):
    """A CSV of `rows` 16×16 pictures with string classes; the classes' counts, by name."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (rows, 256))
    classes = np.array(["circle", "square", "star"])[rng.integers(0, 3, rows)]
    path.write_text(",".join(f"p{j}" for j in range(256)) + ",shape\n" + "".join(
        ",".join(map(str, p)) + f",{c}\n" for p, c in zip(pixels, classes)))
    return {name: int((classes == name).sum()) for name in ("circle", "square", "star")}


@pytest.mark.slow
def test_eval_of_a_csv_checkpoint_on_another_csv_reports_that_files_rows(tmp_path):
    """Test that `hvdl eval --checkpoint C --data.test_path x.csv --data.label shape` evaluates a
    model trained on one CSV (holding out a share of it) on the rows of another: its count and
    its classes' counts."""
    import json

    shapes_csv(tmp_path / "train.csv", 96, seed=3)
    counts = shapes_csv(tmp_path / "x.csv", 37, seed=4)
    train_here(["-m", "hvdl.train", "--data.path", str(tmp_path / "train.csv"), "--data.label",
                "shape", "--data.shape", "1,16,16", "--batch_size", "24", "--epochs", "1",
                "--data.test_fraction", "0.25", "--results_dir", str(tmp_path / "runs")])
    (checkpoint,) = (tmp_path / "runs").glob("*/checkpoints/step-*.pt")
    out = check_hvdl(["eval", "--checkpoint", str(checkpoint), "--data.test_path",
                      str(tmp_path / "x.csv"), "--data.label", "shape", "--out",
                      str(tmp_path / "r.json")])
    found = json.loads((tmp_path / "r.json").read_text())
    assert found["count"] == 37 and "(37 examples)" in out, out
    assert found["classes"] == ["circle", "square", "star"]
    assert [sum(row) for row in found["confusion"]] == [counts[c] for c in found["classes"]]
