"""Every collective engine (hvdl/dist/) gives the same results under each of its launchers: SGD
steps on one global batch on 2 ranks equal one process's, evaluation on 2 ranks equals one
process's, SIGTERM then --resume ends bit for bit as an uninterrupted run, a killed rank ends the
job within 60 s, a NaN stops every rank with status 1; and without Horovod, the single and torch
engines still train. The 2-rank runs of every engine are compared with one reference each (one
process, or one 2-rank run), so the engines also agree with each other."""

import json
import os
import shutil
import signal
import socket
import subprocess
import time

import numpy as np
import pytest
import torch

from hvdl.dist import launcher as launch_env
from hvdl.dist.launcher import torch_place
from procs import (
    ROOT,
    assert_resumed,
    check_hvdl,
    check_job,
    finish,
    job_env,
    launch_command,
    rank_pids,
    run_job,
    snapshot_checkpoints,
    start_job,
    train_here,
    wait_for_file,
)

# (engine, launcher) pairs with 2 ranks; procs.launch_command's launcher names
MATRIX = [("horovod", "gloo"), ("horovod", "mpi"), ("mpi", "mpirun"), ("torch", "torchrun"),
          ("torch", "mpirun")]
IDS = [f"{engine}-{where}" for engine, where in MATRIX]
# what `dist.backend = "auto"` runs under each launcher; the others are asked for by name
AUTO = {"gloo": "horovod", "mpi": "horovod", "mpirun": "mpi", "torchrun": "torch",
        "python": "single"}
NAMES = {"gloo": "horovodrun", "mpi": "horovodrun", "mpirun": "mpirun", "torchrun": "torchrun"}


def engine_args(engine, where):
    """No option where auto picks `engine` under `where` (so auto is tested too), else asked."""
    return [] if AUTO[where] == engine else ["--dist.backend", engine]


def engine_line(engine, where):
    if AUTO[where] == engine:
        return f"hvdl: engine {engine} (started by {NAMES[where]}; auto)"
    return f"hvdl: engine {engine} (dist.backend {engine}; started by {NAMES[where]})"


def run_folder(results):
    (run_dir,) = [p for p in results.iterdir() if p.is_dir()]
    return run_dir


def newest_checkpoint(results):
    return torch.load(sorted((run_folder(results) / "checkpoints").glob("step-*.pt"))[-1],
                      weights_only=True)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Options that train on 4,000 MNIST training images and test on 500, as NumPy files: the
    same digits as the bundled MNIST, read and evaluated in a fraction of its time."""
    from hvdl.data.formats.mnist import load_mnist, resolve_data_dir

    folder = tmp_path_factory.mktemp("digits")
    options = []
    for split, rows, key in (("train", 4000, "data.path"), ("test", 500, "data.test_path")):
        images, labels = load_mnist(resolve_data_dir(), split)
        np.save(folder / f"{split}-x.npy", images[:rows].reshape(rows, -1))  # (rows, 784) uint8
        np.save(folder / f"{split}-y.npy", labels[:rows])
        label_key = "data.label" if split == "train" else "data.test_label"
        options += [f"--{key}", str(folder / f"{split}-x.npy"),
                    f"--{label_key}", str(folder / f"{split}-y.npy")]
    return [*options, "--data.shape", "1,28,28", "--data.scale", "unit"]


# --- np 2 = np 1 on one global batch -------------------------------------------------------------

GLOBAL_BATCH = 128


def one_batch_run(results, np_, where, data, extra=(), **env):
    """Two SGD steps (momentum) on one global batch of 128, the whole shard on any world size;
    `where` "python": in this process (tests/procs.py `train_here`)."""
    args = ["-m", "hvdl.train", *data, "--train_size", str(GLOBAL_BATCH), "--batch_size",
            str(GLOBAL_BATCH // np_), "--epochs", "2", "--optimizer", "sgd", "--momentum", "0.9",
            "--lr", "0.05", "--lr_scaling", "none", "--schedule", "constant", "--results_dir",
            str(results), *extra]
    if where == "python":
        return train_here(args, **env)
    return check_job(np_, args, where, timeout=300, **env)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, digits):
    """(stdout, final weights, checkpoint, results) of the one-batch run on one plain process."""
    results = tmp_path_factory.mktemp("single")
    out = one_batch_run(results, 1, "python", digits)
    ckpt = sorted((run_folder(results) / "checkpoints").glob("step-*.pt"))[-1]
    return out, torch.load(ckpt, weights_only=True)["model"], ckpt, results


@pytest.mark.slow
def test_one_process_runs_the_single_engine_and_records_it(one_process):
    """Test that a run with no launcher runs the single engine, says so first and records it."""
    out, _, _, results = one_process
    assert out.splitlines()[0] == "hvdl: engine single (no launcher; auto)", out[:500]
    meta = json.loads((run_folder(results) / "metadata.json").read_text())
    assert meta["engine"] == "single" and meta["engine_reason"] == "no launcher; auto"


@pytest.mark.slow
@pytest.mark.parametrize("engine, where", MATRIX, ids=IDS)
def test_two_ranks_on_one_global_batch_equal_one_process(tmp_path, digits, one_process, engine,
                                                         where):
    """Test that SGD steps on one global batch give one process's weights on 2 ranks (1e-6)."""
    out = one_batch_run(tmp_path, 2, where, digits, engine_args(engine, where))
    assert out.count("hvdl: engine ") == 1 and engine_line(engine, where) in out, out[:800]
    meta = json.loads((run_folder(tmp_path) / "metadata.json").read_text())
    assert meta["engine"] == engine and meta["world_size"] == 2
    reference = one_process[1]
    two = newest_checkpoint(tmp_path)["model"]
    moved = max(float((reference[k] - initial_weights()[k]).abs().max()) for k in reference)
    assert moved > 1e-3  # the steps changed the weights
    for name, w1 in reference.items():
        torch.testing.assert_close(two[name], w1, rtol=0, atol=1e-6, msg=name)


def initial_weights():
    from hvdl.models.cnn import LeNet5

    torch.manual_seed(42)
    return LeNet5().state_dict()


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.parametrize("engine, where, gpus, env", [
    ("mpi", "mpirun", 1, {"HVDL_CUDA_AWARE_MPI": "0"}),  # through pinned host buffers
    ("mpi", "mpirun", 1, {}),  # CUDA-aware if Open MPI says so, else pinned again
    ("torch", "torchrun", 2, {}),  # NCCL: one GPU per rank
], ids=["mpi-pinned", "mpi-cuda-aware", "torch-nccl"])
def test_gpu_engines_on_two_ranks_equal_one_gpu_process(tmp_path, digits, engine, where, gpus,
                                                        env):
    """Test that the engines' GPU paths give one GPU process's weights on 2 ranks."""
    if torch.cuda.device_count() < gpus:
        pytest.skip(f"needs {gpus} CUDA device(s)")
    if where == "mpirun":  # an MPI runtime: Open MPI's mpirun, and its library loaded by mpi4py
        probe = run_job(1, ["-c", "from mpi4py import MPI; print(MPI.Get_library_version())"],
                        "python", timeout=60) if shutil.which("mpirun", path=job_env()["PATH"]) \
            else None
        if probe is None or probe.returncode or "Open MPI" not in probe.stdout:
            said = (probe.stderr + probe.stdout).strip() if probe else ""
            pytest.skip("needs an MPI runtime: " + (
                "no mpirun on PATH" if probe is None else "mpi4py cannot load Open MPI's "
                f"library ({(said or 'no output').splitlines()[-1][-200:]})"))
    one_batch_run(tmp_path / "one", 1, "python", digits)
    one_batch_run(tmp_path / "two", 2, where, digits, ["--dist.backend", engine], **env)
    reference = newest_checkpoint(tmp_path / "one")["model"]
    two = newest_checkpoint(tmp_path / "two")["model"]
    for name, w1 in reference.items():  # cuDNN's sums differ with the batch split
        torch.testing.assert_close(two[name], w1, rtol=0, atol=1e-5, msg=name)


# --- evaluation -----------------------------------------------------------------------------------

# LeNet-5's test accuracy after the report's 30 steps stays above this (measured: 0.69 on the 500
# test digits, all ten classes predicted; after 8 steps only 0.21, nearly all "2"); chance: 0.1.
SHORT_RUN_ACCURACY = 0.4


@pytest.fixture(scope="module")
def one_process_report(tmp_path_factory, digits):
    """(checkpoint, report) of a short training run evaluated by one plain process."""
    folder = tmp_path_factory.mktemp("eval")
    train_here(["-m", "hvdl.train", *digits, "--epochs", "1", "--max_steps", "30",
                "--results_dir", str(folder / "run")])
    ckpt = next((run_folder(folder / "run") / "checkpoints").glob("*.pt"))
    out = folder / "report1.json"
    check_hvdl(["eval", "--checkpoint", str(ckpt), "--out", str(out)])
    return ckpt, json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("engine, where", MATRIX, ids=IDS)
def test_evaluation_on_two_ranks_equals_one_process(tmp_path, one_process_report, engine,
                                                    where):
    """Test that `hvdl eval` on 2 ranks gives one process's report."""
    ckpt, one = one_process_report
    out = tmp_path / "report2.json"
    check_job(2, ["-m", "hvdl.evaluate", "--checkpoint", str(ckpt), "--out", str(out),
                  *engine_args(engine, where)], where, timeout=300)
    two = json.loads(out.read_text())
    for key in ("confusion", "accuracy", "precision", "recall", "f1", "macro_f1", "count"):
        assert two[key] == one[key], key
    assert abs(two["cost"] - one["cost"]) < 1e-9
    predicted = np.asarray(one["confusion"]).sum(0)  # columns: the predicted classes
    assert (predicted > 0).sum() >= 3, predicted  # a trained model, not one or two classes
    assert one["accuracy"] > SHORT_RUN_ACCURACY, one["accuracy"]


# --- SIGTERM, then --resume -----------------------------------------------------------------------

# 40 steps an epoch on 2 ranks (4000 / 2 / 50), a checkpoint and a stop check every 10 steps,
# every checkpoint kept (a resume must leave the ones before it as they were).
RESUMABLE = ["-m", "hvdl.train", "--batch_size", "50", "--epochs", "2", "--checkpoint_every",
             "10", "--stop_check_every", "10", "--log_every", "10", "--keep_checkpoints", "100"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, digits):
    """The final checkpoint of the 2-rank run without interruption (mpi engine)."""
    results = tmp_path_factory.mktemp("whole")
    check_job(2, [*RESUMABLE, *digits, "--results_dir", str(results)], "mpirun", timeout=300)
    return newest_checkpoint(results)


@pytest.mark.slow
@pytest.mark.parametrize("engine, where", MATRIX, ids=IDS)
def test_sigterm_to_rank_1_then_resume_ends_as_the_uninterrupted_run(tmp_path, digits,
                                                                     uninterrupted, engine,
                                                                     where):
    """Test that SIGTERM to rank 1 mid-epoch stops both ranks at one step with status 0, and
    --resume ends with the uninterrupted run's weights, bit for bit."""
    run = [*RESUMABLE, *digits, *engine_args(engine, where), "--results_dir", str(tmp_path)]
    proc = start_job(2, run, where)
    ranks = rank_pids(proc, 2)
    wait_for_file("*/checkpoints/step-000000010.pt", tmp_path, proc, timeout=180)
    os.kill(ranks[1], signal.SIGTERM)
    status, out, err = finish(proc, 180)
    assert status == 0, (out + err)[-3000:]
    assert out.count("stopped by SIGTERM") == 1, out[-3000:]
    stopped = newest_checkpoint(tmp_path)
    assert 0 < stopped["batch"] < 40, "not stopped mid-epoch"
    assert stopped["step"] < uninterrupted["step"]
    before = snapshot_checkpoints(run_folder(tmp_path))
    out = check_job(2, [*run, "--resume"], where, timeout=300)
    assert_resumed(out, run_folder(tmp_path), before, stopped["step"])
    resumed = newest_checkpoint(tmp_path)
    assert resumed["step"] == uninterrupted["step"]
    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name


# --- a killed rank --------------------------------------------------------------------------------

LONG = ["-m", "hvdl.train", "--batch_size", "50", "--epochs", "50", "--checkpoint_every", "5"]
# what each launcher says when a rank dies of SIGKILL
DEATH_NOTICE = {"gloo": "Exit code: 137", "mpi": "exited on signal 9",
                "mpirun": "exited on signal 9", "torchrun": "Signal 9 (SIGKILL)"}


@pytest.mark.slow
@pytest.mark.parametrize("engine, where", MATRIX, ids=IDS)
def test_killing_rank_1_ends_the_job_within_60_s(tmp_path, digits, engine, where):
    """Test that kill -9 of rank 1 ends the job non-zero within 60 s, the launcher naming it."""
    proc = start_job(2, [*LONG, *digits, *engine_args(engine, where), "--results_dir",
                         str(tmp_path)], where)
    ranks = rank_pids(proc, 2)
    wait_for_file("*/checkpoints/step-*.pt", tmp_path, proc, timeout=180)  # training under way
    killed = time.monotonic()
    os.kill(ranks[1], signal.SIGKILL)
    status, out, err = finish(proc, 60)
    assert time.monotonic() - killed < 60
    assert status != 0
    assert DEATH_NOTICE[where] in out + err, (out + err)[-3000:]


# --- a NaN ----------------------------------------------------------------------------------------

NAN_BASE = ["-m", "hvdl.train", "--optimizer", "sgd", "--train_size", "2000", "--batch_size",
            "50", "--epochs", "1"]


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, digits):
    """A results folder with 10 good SGD steps of one process."""
    results = tmp_path_factory.mktemp("good")
    train_here([*NAN_BASE, *digits, "--lr", "0.05", "--max_steps", "10", "--results_dir",
                str(results)])
    return results


@pytest.mark.slow
@pytest.mark.parametrize("engine, where", MATRIX, ids=IDS)
def test_a_nan_stops_both_ranks_with_status_1_and_one_message(tmp_path, digits, good_run,
                                                              engine, where):
    """Test that resuming at a rate that overflows the weights ends both ranks with status 1,
    one line from rank 0, no traceback, and only finite checkpoints kept."""
    results = tmp_path / "runs"
    shutil.copytree(good_run, results)
    proc = run_job(2, [*NAN_BASE, *digits, "--resume", "--lr", "1e10", "--log_every", "1",
                       "--checkpoint_every", "1", "--results_dir", str(results),
                       *engine_args(engine, where)], where, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-3000:]
    assert text.count("hvdl: error:") == 1, text[-3000:]
    assert "loss became" in text or "not finite" in text, text[-3000:]
    assert "hvdl/train.py" not in text, text[-3000:]  # no rank died with a Python traceback
    saved = sorted((run_folder(results) / "checkpoints").glob("step-*.pt"))
    assert saved
    for path in saved:
        model = torch.load(path, weights_only=True)["model"]
        assert all(torch.isfinite(t).all() for t in model.values()), path


# --- without Horovod ------------------------------------------------------------------------------

TINY = ["-m", "hvdl.train", "--epochs", "1", "--max_steps", "4", "--log_every", "2"]
ENGINE_MODULES = ("horovod", "mpi4py")


@pytest.fixture(scope="module")
def no_horovod(tmp_path_factory):
    """A PYTHONPATH on which `import horovod` fails, as on a machine without it."""
    fake = tmp_path_factory.mktemp("without") / "horovod"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('horovod is not installed here')\n")
    return str(fake.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")


@pytest.mark.slow
def test_single_engine_trains_without_horovod_and_imports_no_engine_library(tmp_path, digits,
                                                                            no_horovod):
    """Test that one process trains with Horovod unimportable, importing neither horovod nor
    mpi4py."""
    code = ("import sys\nfrom hvdl.train import main\n"
            f"main({[*TINY[2:], *digits, '--results_dir', str(tmp_path)]!r})\n"
            f"print('loaded:', sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{ENGINE_MODULES!r}))\n")
    out = check_job(1, ["-c", code], "python", timeout=300, PYTHONPATH=no_horovod)
    assert out.splitlines()[0] == "hvdl: engine single (no launcher; auto)", out[:500]
    assert "loaded: []" in out, out[-500:]
    assert newest_checkpoint(tmp_path)["step"] == 4


@pytest.mark.slow
def test_torch_engine_trains_under_torchrun_without_horovod(tmp_path, digits, no_horovod):
    """Test that torchrun -np 2 trains with Horovod unimportable."""
    out = check_job(2, [*TINY, *digits, "--results_dir", str(tmp_path)], "torchrun", timeout=300,
                    PYTHONPATH=no_horovod)
    assert engine_line("torch", "torchrun") in out
    assert newest_checkpoint(tmp_path)["step"] == 4


@pytest.mark.slow
def test_asking_for_horovod_without_it_says_how_to_install_it(tmp_path, no_horovod):
    """Test that dist.backend horovod without Horovod is one line naming launch/setup.sh."""
    proc = run_job(1, [*TINY, "--dist.backend", "horovod", "--results_dir", str(tmp_path)],
                   "python", timeout=120, PYTHONPATH=no_horovod)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "the horovod engine needs Horovod" in lines[0], proc.stderr
    assert "launch/setup.sh" in lines[0] and "dist.backend auto, mpi, torch or single" in lines[0]
    assert not any(tmp_path.iterdir())


# --- srun (simulated: its variables and a stand-in scontrol) --------------------------------------

@pytest.mark.slow
def test_torch_engine_under_srun_reads_slurms_variables(tmp_path, digits):
    """Test that two processes given srun's variables meet at the first host of the node list
    and the port from the job id, and train as 2 ranks."""
    port = next(p for p in range(15000 + os.getpid() % 9000, 25000) if free(p))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho localhost\necho node2\n")
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {"SLURM_JOB_ID": str(100000 + port - 15000), "SLURM_STEP_ID": "0",
             "SLURM_NTASKS": "2", "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_NODEID": "0",
             "SLURM_STEP_NODELIST": "localhost,node2",
             "PATH": f"{bin_dir}{os.pathsep}{job_env()['PATH']}"}
    procs = []
    for rank in range(2):
        env = job_env(**slurm, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank))
        procs.append(subprocess.Popen(
            launch_command(1, [*TINY, *digits, "--dist.backend", "torch", "--results_dir",
                               str(tmp_path / "runs")], "python"),
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [finish(p, 300) for p in procs]
    assert [r[0] for r in results] == [0, 0], results[0][2][-3000:] + results[1][2][-3000:]
    assert "hvdl: engine torch (dist.backend torch; started by srun)" in results[0][1]
    assert "on 2 rank(s)" in results[0][1] and results[1][1] == ""  # rank 1 is silent
    assert newest_checkpoint(tmp_path / "runs")["step"] == 4


def free(port):
    """Whether `port` can be listened on here now."""
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


# --- launcher detection and the auto choice (no job) ----------------------------------------------

FEATURES = {"horovod": frozenset({"elastic", "hooks", "fp16", "timeline"}),
            "mpi": frozenset(), "torch": frozenset({"fp16"}),
            "single": frozenset({"hooks", "fp16"})}


@pytest.mark.parametrize("environ, started", [
    ({}, "none"),
    ({"HOROVOD_RANK": "0", "HOROVOD_GLOO_RENDEZVOUS_ADDR": "x"}, "horovodrun"),
    ({"HOROVOD_ELASTIC": "1"}, "horovodrun"),
    ({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_MCA_pml": "ob1", "OMPI_MCA_btl": "^openib"},
     "horovodrun"),
    ({"OMPI_COMM_WORLD_SIZE": "2", "_": "/usr/bin/horovodrun"}, "horovodrun"),
    ({"OMPI_COMM_WORLD_SIZE": "2", "_": "/usr/bin/mpirun"}, "mpirun"),
    ({"TORCHELASTIC_RUN_ID": "x", "RANK": "0", "SLURM_PROCID": "0", "SLURM_STEP_ID": "0"},
     "torchrun"),
    ({"SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "PMIX_RANK": "0"}, "srun"),
    ({"SLURM_PROCID": "0", "SLURM_JOB_ID": "7"}, "none"),  # the batch script, not a step
    ({"PMI_RANK": "0"}, "mpiexec"),
])
def test_the_launcher_is_read_from_the_environment(environ, started):
    """Test that horovodrun (Gloo, MPI, elastic), torchrun, mpirun, srun and none are told apart."""
    assert launch_env.launcher(environ) == started


def test_auto_follows_the_launcher_and_what_the_run_needs(monkeypatch):
    """Test that auto picks horovod, mpi, torch or single by launcher, Horovod for a feature
    only it has, and that an explicit backend is taken as asked."""
    monkeypatch.setattr(launch_env, "importable", lambda module: True)
    mpirun = {"OMPI_COMM_WORLD_SIZE": "2"}
    choose = launch_env.choose
    assert choose("auto", {}, {}, FEATURES) == ("single", "no launcher; auto")
    assert choose("auto", mpirun, {}, FEATURES) == ("mpi", "started by mpirun; auto")
    assert choose("auto", {"HOROVOD_RANK": "1"}, {}, FEATURES)[0] == "horovod"
    assert choose("auto", {"TORCHELASTIC_RUN_ID": "x"}, {}, FEATURES)[0] == "torch"
    hooks = {"hooks": "perf.grad_sync"}
    assert choose("auto", mpirun, hooks, FEATURES) == (
        "horovod", "started by mpirun; perf.grad_sync 'hooks' needs Horovod; auto")
    assert choose("auto", {}, hooks, FEATURES)[0] == "single"  # one process: nothing to hook
    assert choose("torch", mpirun, {}, FEATURES) == ("torch", "dist.backend torch; started by "
                                                              "mpirun")
    monkeypatch.setattr(launch_env, "importable", lambda module: module != "mpi4py")
    assert choose("auto", mpirun, {}, FEATURES) == (
        "horovod", "started by mpirun, mpi4py not importable; auto")


def test_a_feature_the_engine_lacks_is_one_line_naming_the_key():
    """Test that hooks, timeline or elastic asked of another engine names the key and horovod."""
    line = launch_env.unsupported("mpi", {"hooks": "perf.grad_sync"}, FEATURES["mpi"])
    assert line.startswith("config key 'perf.grad_sync' is 'hooks' and the mpi engine has no "
                           "per-tensor hook optimizer; allowed: dist.backend horovod")
    assert line.endswith("or perf.grad_sync fused")
    assert launch_env.unsupported("single", {"fp16": "x"}, FEATURES["single"]) is None


def test_torch_ranks_come_from_torchrun_open_mpi_or_slurm(monkeypatch):
    """Test that the torch engine's rank, sizes and rendezvous follow each launcher's variables."""
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no scontrol: the list is parsed
    place = torch_place({"TORCHELASTIC_RUN_ID": "x", "RANK": "3", "WORLD_SIZE": "4",
                         "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "h",
                         "MASTER_PORT": "1234"})
    assert (place.rank, place.size, place.local_rank, place.local_size, place.addr,
            place.port, place.how) == (3, 4, 1, 2, "h", 1234, "torchrun")
    place = torch_place({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2",
                         "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"})
    assert (place.rank, place.size, place.local_size, place.addr, place.how) == (
        1, 2, 2, None, "mpirun")  # the address is agreed through mpi4py
    place = torch_place({"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_STEP_ID": "0",
                         "SLURM_LOCALID": "1", "SLURM_NODEID": "2",
                         "SLURM_STEP_TASKS_PER_NODE": "2(x2),3", "SLURM_JOB_ID": "4321987",
                         "SLURM_STEP_NODELIST": "gpu[07-09,12]"})
    assert (place.rank, place.size, place.local_rank, place.local_size, place.addr,
            place.port, place.how) == (5, 6, 1, 3, "gpu07", 15000 + 1987, "srun")


def test_the_mpi_engine_hands_mpi_the_tensors_own_memory():
    """Test that the mpi engine's CPU buffers are the tensor's memory (no copy), bytes too."""
    from hvdl.dist.mpi_engine import MPIEngine

    engine = MPIEngine.__new__(MPIEngine)  # no MPI needed to look at the buffers
    engine.cuda_aware = False
    flat = torch.arange(6, dtype=torch.float32)
    seen = []
    engine._in_place(flat, lambda buf: seen.append(buf))
    engine._in_place(flat, lambda buf: seen.append(buf), as_bytes=True)
    assert seen[0].ctypes.data == flat.data_ptr() and seen[0].dtype.name == "float32"
    assert seen[1].ctypes.data == flat.data_ptr() and seen[1].nbytes == 24
    seen[0][:] = 1.0  # what MPI writes lands in the tensor
    assert float(flat.sum()) == 6.0
