"""slurm/train.sh on a real one-node Slurm cluster (launch/slurm-local.sh starts it, as root).

    launch/slurm-local.sh && python -m pytest tests/test_slurm.py

Skipped, with the script's reason, where the cluster cannot be started (not root, no apt-get, a
package apt-get cannot install), or failed with it where HVDL_REQUIRE_CLUSTER=1 (CI). A cluster
the tests started is stopped afterwards; one that was up before stays up.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cluster import cannot_start
from procs import ROOT, job_env

pytestmark = pytest.mark.slow

TINY = ["--model", "lenet5", "--epochs", "1", "--max_steps", "5", "--train_size", "2000"]
# Two tasks on the 2-CPU local node (the script asks for 4 tasks x 8 CPUs), and no GPUs should its
# --gpus-per-node line be enabled: on the command line 0 overrides it where no GPU is configured.
TWO_TASKS = ["--ntasks=2", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0"]


@pytest.fixture(scope="module")
def cluster():
    """Start the local cluster (idempotent); skip the module where this machine cannot (fail it
    under HVDL_REQUIRE_CLUSTER=1); stop it afterwards if it was not running before."""
    script = str(ROOT / "launch" / "slurm-local.sh")
    running = shutil.which("scontrol") is not None and slurm("scontrol", "ping").returncode == 0
    proc = subprocess.run([script], capture_output=True, text=True, timeout=900)
    reason = (proc.stderr.strip().splitlines() or ["no message"])[-1]
    if proc.returncode == 2:
        cannot_start("the one-node Slurm cluster (launch/slurm-local.sh)", reason)
    assert proc.returncode == 0, f"launch/slurm-local.sh failed: {proc.stderr}{proc.stdout}"
    yield
    if not running:  # leave nothing behind that the tests started
        subprocess.run([script, "stop"], capture_output=True, text=True, timeout=120)


def slurm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60)


def job_state(job_id: str) -> str:
    """The job's state from sacct when accounting is on, else from slurmctld's memory."""
    acct = slurm("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State")
    if acct.returncode == 0 and acct.stdout.strip():
        return acct.stdout.split()[0]
    match = re.search(r"JobState=(\S+)", slurm("scontrol", "show", "job", job_id).stdout)
    return match.group(1) if match else "UNKNOWN"


def submit_and_wait(tmp_path: Path, name: str, args: list[str], timeout: float,
                    **env: str) -> tuple[subprocess.CompletedProcess, str]:
    """`sbatch --wait` slurm/train.sh; cancel the job by name if it outlives `timeout`."""
    cmd = ["sbatch", "--wait", "--parsable", f"--job-name={name}", *TWO_TASKS,
           f"--output={tmp_path}/%x-%j.out", "slurm/train.sh", *args]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=job_env(**env), capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        slurm("scancel", f"--name={name}")
        pytest.fail(f"job {name} did not finish in {timeout:.0f}s: {' '.join(cmd)}\n"
                    + "".join(p.read_text() for p in tmp_path.glob(f"{name}-*.out")))
    outputs = list(tmp_path.glob(f"{name}-*.out"))
    return proc, outputs[0].read_text() if outputs else "(no output file)"


def test_sbatch_trains_on_two_ranks_and_writes_a_complete_run_folder(cluster, tmp_path):
    """Test that sbatch slurm/train.sh runs hvdl.train on ranks 0 and 1 of 2 to completion, its
    output file holding whole progress lines."""
    name = f"hvdl-test-{uuid.uuid4().hex[:8]}"
    runs = tmp_path / "runs"
    proc, output = submit_and_wait(tmp_path, name, [*TINY, "--log_every", "5", "--results_dir",
                                                    str(runs)], 300)
    assert proc.returncode == 0, f"sbatch --wait exited {proc.returncode}\n{proc.stderr}{output}"
    job_id = proc.stdout.strip().split(";")[0]
    assert job_state(job_id) in ("COMPLETED", "UNKNOWN"), output  # UNKNOWN: aged out already

    (run_dir,) = runs.glob("*-lenet5")
    for file in ("config.toml", "metadata.json", "metrics.json"):
        assert (run_dir / file).is_file(), f"{file} missing from {run_dir}"
    assert list(run_dir.glob("events.out.tfevents.*")), f"no TensorBoard events in {run_dir}"
    assert list(run_dir.glob("checkpoints/*.pt")), f"no checkpoint in {run_dir}"
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["world_size"] == 2, output
    assert sorted(r["rank"] for r in meta["inventory"]) == [0, 1], output
    raw = next(tmp_path.glob(f"{name}-*.out")).read_bytes().decode()  # read_text turns \r to \n
    assert "\r" not in raw and re.search(  # step 5 of 1,000 rows / 64 a rank, whole
        r"^train epoch 1: step 5/15 \(33%\), [\d,]+ samples/s, (\d+:\d\d(:\d\d)?|\d+ s) left, "
        r"cost \d+\.\d{4}$", raw, re.M), output


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(1)


def test_time_limit_signal_checkpoints_requeues_and_resumes(cluster, tmp_path):
    """Test that USR1 to the batch shell (Slurm's warning before the time limit) makes both
    ranks of the real trainer stop after a checkpoint, and the requeued job resumes from that
    checkpoint and finishes."""
    name = f"hvdl-test-{uuid.uuid4().hex[:8]}"
    runs = tmp_path / "runs"
    args = ["--model", "lenet5", "--train_size", "20000", "--epochs", "2", "--batch_size", "50",
            "--checkpoint_every", "10", "--results_dir", str(runs)]
    cmd = ["sbatch", "--parsable", f"--job-name={name}", *TWO_TASKS,
           f"--output={tmp_path}/%x-%j.out", "slurm/train.sh", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=job_env(HVDL_VENV=str(Path(sys.executable).parent
                                                                   .parent)),
                          capture_output=True, text=True, timeout=60, check=True)
    job_id = proc.stdout.strip().split(";")[0]
    output = tmp_path / f"{name}-{job_id}.out"
    text = lambda: output.read_text() if output.exists() else ""  # noqa: E731
    try:
        wait_for(lambda: list(runs.glob("*/checkpoints/step-*.pt")), 240, "a checkpoint")
        # What Slurm does 120 s before the time limit (--signal=B:USR1@120).
        slurm("scancel", "--signal=USR1", "--batch", job_id)
        wait_for(lambda: "Restarts=1" in slurm("scontrol", "show", "job", job_id).stdout, 120,
                 "the job to be requeued")
        # A requeued job waits about two minutes before it is eligible; start it now instead.
        slurm("scontrol", "update", f"JobId={job_id}", "StartTime=now")
        wait_for(lambda: job_state(job_id) in ("COMPLETED", "FAILED", "CANCELLED"), 300,
                 "the requeued job to finish")
    finally:
        slurm("scancel", job_id)  # no-op when it has finished
    log = text()
    assert job_state(job_id) == "COMPLETED", log
    stopped = re.search(r"stopped by SIGUSR1 after step (\d+)", log)
    assert stopped and "start 2," in log, log
    (run_dir,) = runs.glob("*-lenet5")
    saved = run_dir / "checkpoints" / f"step-{int(stopped.group(1)):09d}.pt"
    assert f"resumed from {saved}" in log, log
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["train"]] == [1, 2] and metrics["stops"], metrics


def test_a_cluster_started_again_after_its_daemons_were_killed_holds_no_old_job(cluster):
    """Test that launch/slurm-local.sh, started after its daemons were stopped with a job still
    running, comes up with no job and its node idle: the old job is not recovered from the saved
    state, where it would hold the node and every later job would wait behind it."""
    import psutil

    script = str(ROOT / "launch" / "slurm-local.sh")
    job_id = slurm("sbatch", "--parsable", "--ntasks=1", "--output=/dev/null", "--wrap",
                   "sleep 600").stdout.strip()
    try:
        wait_for(lambda: job_state(job_id) == "RUNNING", 60, "the job to run")
        subprocess.run([script, "stop"], check=True, capture_output=True, timeout=120)
        start = subprocess.run([script], capture_output=True, text=True, timeout=300)
        assert start.returncode == 0, start.stderr
        assert slurm("squeue", "-h", "-o", "%i %T").stdout.strip() == ""
        assert slurm("sinfo", "-h", "-n", "localhost", "-o", "%T").stdout.strip() == "idle"
    finally:  # the killed daemons' job lives on as processes: end them
        slurm("scancel", job_id)
        mine = (f"slurmstepd: [{job_id}.", f"/job{int(job_id):05d}/slurm_script")
        for proc in psutil.process_iter(["cmdline"]):
            if any(m in " ".join(proc.info["cmdline"] or []) for m in mine):
                with contextlib.suppress(psutil.Error):
                    for child in [*proc.children(recursive=True), proc]:
                        child.kill()
