"""Ranks on several hosts for real: horovodrun, mpirun and Slurm across the hosts that
launch/local-cluster.sh makes on this machine, and what each does when a host fails.

    sudo launch/local-cluster.sh start 3       # optional: the `cluster` fixture starts it
    python -m pytest tests/test_multihost.py -ra

node1..node3 each have their own address on a bridge, hostname, /tmp, sshd and slurmd, so ranks
on two nodes talk TCP as on two machines. Launchers start inside node1, as after `ssh node1`;
run folders are on a file system every node sees, and their metadata.json says where each rank
ran. Skipped, with the reason, where the cluster cannot start (tests/cluster.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cluster import Cluster, horovodrun, mpirun
from procs import BIN, ROOT

pytestmark = pytest.mark.slow

TINY = ["--model", "lenet5", "--train_size", "2000", "--epochs", "1", "--max_steps", "5"]
# 200 steps an epoch on 2 ranks: still training when a host fails a few seconds in.
LONG = ["--model", "lenet5", "--train_size", "20000", "--batch_size", "50", "--epochs", "5",
        "--checkpoint_every", "5"]
CORES = os.cpu_count() or 1  # each node sees all of this machine's cores


@pytest.fixture
def shared(cluster: Cluster, request) -> Path:
    """A folder for this test that every node sees; afterwards the cluster is whole again."""
    folder = cluster.shared / re.sub(r"\W", "-", request.node.name)
    folder.mkdir()
    yield folder
    cluster.heal()


def train(results: Path, args: list[str] = TINY) -> list[str]:
    return ["-m", "hvdl.train", *args, "--results_dir", str(results)]


def launch(launcher: str, hosts: str, np_: int, args: list[str]) -> list[str]:
    """horovodrun (gloo, mpi), mpirun, or srun on the nodes of `hosts` (one task per node)."""
    if launcher in ("gloo", "mpi"):
        return horovodrun(launcher, hosts, np_, args)
    if launcher == "mpirun":
        return mpirun(hosts, np_, args, export=("HVDL_THREADS",))
    nodes = ",".join(h.split(":")[0] for h in hosts.split(","))
    return ["srun", f"--nodelist={nodes}", f"--nodes={np_}", "--ntasks-per-node=1",
            "--cpus-per-task=1", "--mpi=pmix", sys.executable, *args]


def metadata(results: Path) -> dict:
    (run_dir,) = results.glob("*-lenet5")
    return json.loads((run_dir / "metadata.json").read_text())


def final_weights(results: Path) -> dict[str, torch.Tensor]:
    """The model in the newest checkpoint of the one run under `results`."""
    (run_dir,) = results.glob("*-lenet5")
    newest = sorted((run_dir / "checkpoints").glob("step-*.pt"))[-1]
    return torch.load(newest, weights_only=True)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs by {(a[name] - b[name]).abs().max()}"


def hosts_of(meta: dict) -> dict[str, list[int]]:
    """{host: sorted local ranks} from a run's inventory."""
    found: dict[str, list[int]] = {}
    for entry in meta["inventory"]:
        found.setdefault(entry["host"], []).append(entry["local_rank"])
    return {host: sorted(ranks) for host, ranks in found.items()}


def check(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit {proc.returncode}: {' '.join(proc.args)}\n{out[-4000:]}"
    return out


# --- launchers -----------------------------------------------------------------------------

# The engine `auto` picks under each launcher (hvdl/dist/launcher.py).
ENGINE = {"gloo": "horovod", "mpi": "horovod", "mpirun": "mpi", "srun": "mpi"}


@pytest.mark.parametrize("launcher", ["gloo", "mpi", "mpirun"])
def test_launcher_over_ssh_puts_one_rank_on_each_of_two_hosts(cluster, shared, launcher):
    """Test that the launcher, run on node1, trains with rank 0 on node1 and rank 1 on node2."""
    check(cluster.run("node1", launch(launcher, "node1:1,node2:1", 2, train(shared)),
                      timeout=180))
    meta = metadata(shared)
    assert meta["world_size"] == 2 and meta["hosts"] == ["node1", "node2"], meta
    assert meta["engine"] == ENGINE[launcher], meta["engine_reason"]
    assert [(r["rank"], r["host"], r["local_rank"]) for r in meta["inventory"]] == \
        [(0, "node1", 0), (1, "node2", 0)]
    # One rank on a host: hvdl gives it all the host's cores.
    assert [r["threads"] for r in meta["inventory"]] == [CORES, CORES]


def wait_for_job(cluster: Cluster, job_id: str, states: tuple[str, ...], timeout: float) -> str:
    """Poll slurmctld (sbatch --wait polls at up to 32 s intervals) until the job is in
    one of `states`; return that state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = job_field(cluster, job_id, "JobState")
        if state in states:
            return state
        time.sleep(0.5)
    cluster.slurm("scancel", job_id)
    raise AssertionError(f"job {job_id} not {'/'.join(states)} after {timeout:.0f} s: {state}")


def job_field(cluster: Cluster, job_id: str, field: str) -> str:
    match = re.search(rf"\b{field}=(\S+)", cluster.slurm("scontrol", "show", "job", job_id))
    return match.group(1) if match else "UNKNOWN"


def sbatch(cluster: Cluster, shared: Path, args: list[str]) -> str:
    """Submit slurm/train.sh, as it is, on 2 nodes x 1 task from the checkout; its job id."""
    cmd = ["sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1",
           f"--output={shared}/%x-%j.out", "slurm/train.sh", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=cluster.env(HVDL_VENV=sys.prefix),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def test_sbatch_runs_slurm_train_sh_with_one_task_on_each_of_two_nodes(cluster, shared):
    """Test that sbatch -N 2 --ntasks-per-node 1 slurm/train.sh trains with a rank per node."""
    job_id = sbatch(cluster, shared, train(shared / "runs")[2:])
    state = wait_for_job(cluster, job_id, ("COMPLETED", "FAILED", "CANCELLED"), 180)
    log = "".join(p.read_text() for p in shared.glob("*.out"))
    assert state == "COMPLETED", log
    meta = metadata(shared / "runs")
    assert meta["world_size"] == 2 and len(meta["hosts"]) == 2, log
    assert hosts_of(meta) == {host: [0] for host in meta["hosts"]}, meta["inventory"]
    assert [r["threads"] for r in meta["inventory"]] == [1, 1]  # --cpus-per-task=1
    assert meta["engine"] == ENGINE["srun"], meta["engine_reason"]


@pytest.mark.parametrize("launcher", ["gloo", "mpirun"])
def test_two_hosts_with_two_ranks_each_have_local_ranks_0_and_1(cluster, shared, launcher):
    """Test that -np 4 on node1:2,node2:2 gives each host local ranks 0, 1 and half its cores."""
    log = check(cluster.run("node1", launch(launcher, "node1:2,node2:2", 4, train(shared)),
                            timeout=240))
    meta = metadata(shared)
    assert meta["world_size"] == 4 and meta["hosts"] == ["node1", "node2"]
    assert hosts_of(meta) == {"node1": [0, 1], "node2": [0, 1]}, meta["inventory"]
    assert [r["threads"] for r in meta["inventory"]] == [max(1, CORES // 2)] * 4
    # `log` holds every rank's output of both hosts (hvdl's per-host lines go here).
    assert "hvdl: lenet5 (cnn) on 4 rank(s)" in log
    # The gzip MNIST files are decompressed into each host's own /tmp by its local rank 0 alone.
    for host in ("node1", "node2"):
        prepared = re.findall(rf"hvdl: data: {host}: local rank 0 prepared \d+ gzip file\(s\) "
                              rf".* for this host's 2 rank\(s\)", log)
        assert len(prepared) == 1, f"{host}: {prepared}\n{log[-3000:]}"


def torchrun_on(cluster: Cluster, shared: Path) -> list:
    """torchrun started on node1 and on node2 (--nnodes 2, one process each), meeting at node1."""
    cmd = [str(BIN / "torchrun"), "--nnodes", "2", "--nproc_per_node", "1",
           "--rdzv_backend", "c10d", "--rdzv_endpoint", "node1:29411", "--rdzv_id", "hvdl",
           *train(shared)]
    return [cluster.start(node, cmd, GLOO_SOCKET_IFNAME="eth0") for node in ("node1", "node2")]


@pytest.mark.parametrize("how", ["mpirun", "torchrun"])
def test_the_torch_engine_runs_across_two_hosts(cluster, shared, how):
    """Test that torch.distributed's Gloo, under mpirun (--dist.backend torch) and under a
    torchrun per node, trains with one rank on each host (the horovod and mpi engines: above)."""
    if how == "mpirun":
        check(cluster.run("node1", launch("mpirun", "node1:1,node2:1", 2,
                                          train(shared) + ["--dist.backend", "torch"]),
                          timeout=180))
    else:
        jobs = torchrun_on(cluster, shared)
        statuses = [job.finish(timeout=180) for job in jobs]
        assert statuses == [0, 0], "\n".join(job.output[-3000:] for job in jobs)
    meta = metadata(shared)
    assert meta["engine"] == "torch" and meta["controller"] == "gloo", meta
    assert [(r["rank"], r["host"]) for r in meta["inventory"]] == [(0, "node1"), (1, "node2")]


def test_one_host_and_two_hosts_end_with_the_same_weights(cluster, shared):
    """Test that 2 ranks on node1 and 1 rank on each of node1, node2 train to equal weights."""
    for name, hosts in (("one", "node1:2"), ("two", "node1:1,node2:1")):
        check(cluster.run("node1", launch("mpirun", hosts, 2, train(shared / name)),
                          HVDL_THREADS="1", timeout=180))  # threads change float sums
    assert metadata(shared / "two")["hosts"] == ["node1", "node2"]
    one, two = final_weights(shared / "one"), final_weights(shared / "two")
    assert_same_weights(one, two)
    from hvdl.models.cnn import LeNet5

    torch.manual_seed(42)  # the run's seed: its initial weights, which training moved
    initial = LeNet5().state_dict()
    assert not any(torch.equal(one[name], initial[name]) for name in initial)


# --- host failures -------------------------------------------------------------------------

# What names node2 in each launcher's output after the failure.
LOST_HOST = {
    ("gloo", "cut"): "Timeout, server node2 not responding",  # ssh's keepalive
    ("mpi", "cut"): "Timeout, server node2 not responding",
    ("mpirun", "cut"): "Timeout, server node2 not responding",
    ("srun", "cut"): "Node failure on node2",  # slurmctld, SlurmdTimeout
    ("gloo", "kill"): "rank 1 on node2: its process is gone",  # hvdl/dist/peers.py on rank 0
    ("mpi", "kill"): "on node node2 exited on signal 9",
    ("mpirun", "kill"): "on node node2 exited on signal 9",
    ("srun", "kill"): "node2: task 1: Killed",  # then KillOnBadExit ends the step
}


@pytest.mark.parametrize("failure", ["cut", "kill"])
@pytest.mark.parametrize("launcher", ["gloo", "mpi", "mpirun", "srun"])
def test_a_failed_host_ends_the_job_within_60_s_naming_it(cluster, shared, launcher, failure):
    """Test that node2's cable cut, or its rank killed, ends the job non-zero in 60 s naming it."""
    job = cluster.start("node1", launch(launcher, "node1:1,node2:1", 2, train(shared, LONG)),
                        HVDL_THREADS="1")
    job.wait_for_file("*/checkpoints/step-*.pt", shared, timeout=120)  # training is under way
    before = len(job.output)
    failed = time.monotonic()
    if failure == "cut":
        cluster.link("node2", "down")
    else:
        assert cluster.kill_ranks("node2"), "no rank on node2"
    status = job.finish(timeout=60)
    took = time.monotonic() - failed
    after = job.output[before:]
    assert status is not None, f"{launcher} still ran 60 s after node2 failed\n{after[-3000:]}"
    assert status != 0, after[-3000:]
    assert LOST_HOST[launcher, failure] in after, after[-3000:]
    print(f"{launcher} {failure}: exit {status} after {took:.1f} s")


def test_slurm_requeues_a_job_that_lost_a_node_and_resume_gives_the_same_weights(cluster,
                                                                                 shared):
    """Test that a job whose node is cut off is requeued, resumes, and ends as if never cut."""
    args = ["--model", "lenet5", "--train_size", "4000", "--batch_size", "50", "--epochs", "2",
            "--checkpoint_every", "10"]  # 80 steps on 2 ranks
    check(cluster.run("node1", launch("mpirun", "node1:2", 2, train(shared / "whole", args)),
                      HVDL_THREADS="1", timeout=180))
    job_id = sbatch(cluster, shared, train(shared / "runs", args)[2:])
    wait_for_job(cluster, job_id, ("RUNNING",), 60)
    nodes = cluster.slurm("scontrol", "show", "hostnames", job_field(cluster, job_id, "NodeList"))
    lost = nodes.split()[1]  # not the batch host, whose shell requeues nothing itself
    first = sorted((shared / "runs").glob("*/checkpoints/step-*.pt"))
    deadline = time.monotonic() + 120
    while not first and time.monotonic() < deadline:
        time.sleep(0.2)
        first = sorted((shared / "runs").glob("*/checkpoints/step-*.pt"))
    assert first, "no checkpoint within 120 s"
    cut = time.monotonic()
    cluster.link(lost, "down")
    deadline = time.monotonic() + 90
    while True:  # slurmctld marks the node down, ends the job, requeues it
        info = cluster.slurm("scontrol", "show", "job", job_id)
        if "Restarts=1" in info and "JobState=PENDING" in info:
            break
        assert time.monotonic() < deadline, info
        time.sleep(0.5)
    requeued = time.monotonic() - cut
    # A requeued job becomes eligible two minutes later; start it now instead.
    cluster.slurm("scontrol", "update", f"JobId={job_id}", "StartTime=now")
    state = wait_for_job(cluster, job_id, ("COMPLETED", "FAILED", "CANCELLED"), 180)
    print(f"slurm: {lost} cut, job requeued after {requeued:.1f} s, "
          f"done {time.monotonic() - cut:.1f} s after the cut")
    log = "".join(p.read_text() for p in shared.glob("*.out"))
    assert state == "COMPLETED", log
    assert "start 2," in log and "resumed from" in log, log
    assert lost not in job_field(cluster, job_id, "NodeList")  # ran again without it
    assert_same_weights(final_weights(shared / "whole"), final_weights(shared / "runs"))


# --- elastic -------------------------------------------------------------------------------

def test_elastic_run_goes_on_after_a_host_crash_and_takes_in_a_host_added_later(cluster,
                                                                                shared):
    """Test that an elastic run loses node2's rank, goes on on node1, then node3 joins it."""
    hosts = shared / "hosts"
    hosts.write_text("node1:1\nnode2:1\n")
    cmd = [str(BIN / "horovodrun"), "-np", "2", "--min-np", "1", "--max-np", "2",
           "--network-interface", "eth0",
           "--host-discovery-script", str(ROOT / "launch" / "discover-hosts.sh"),
           sys.executable, *train(shared / "runs", [
               "--model", "lenet5", "--elastic", "--train_size", "20000", "--batch_size", "50",
               "--epochs", "6", "--commit_every", "5", "--checkpoint_every", "50"])]
    job = cluster.start("node1", cmd, HVDL_THREADS="1", HVDL_HOSTS_FILE=str(hosts))
    job.wait_for("hvdl: elastic: 2 rank(s)", timeout=120)
    job.wait_for_file("*/checkpoints/step-*.pt", shared / "runs", timeout=120)
    killed = time.monotonic()
    assert cluster.kill_ranks("node2"), "no rank on node2"  # node2 stays in the hosts file
    job.wait_for("hvdl: elastic: 1 rank(s)", timeout=60)
    recovered = time.monotonic() - killed
    hosts.write_text("node1:1\nnode2:1\nnode3:1\n")
    added = time.monotonic()
    cluster.wait_for_ranks("node3", 1, timeout=60)
    job.wait_for_count("hvdl: elastic: 2 rank(s)", 2, timeout=90)
    print(f"elastic: going on with 1 rank {recovered:.1f} s after node2's crash, "
          f"on 2 with node3 {time.monotonic() - added:.1f} s after it was added")
    status = job.finish(timeout=300)
    log = job.output
    assert status == 0, log[-4000:]
    resets = re.findall(r"hvdl: elastic: (\d) rank\(s\)", log)
    assert resets[:3] == ["2", "1", "2"], resets
    (run_dir,) = (shared / "runs").glob("*-lenet5")
    history = json.loads((run_dir / "metrics.json").read_text())["train"]
    assert [e["epoch"] for e in history] == [1, 2, 3, 4, 5, 6], history
    assert history[-1]["ranks"] == 2, history


def test_scaling_script_measures_shared_memory_and_two_hosts_and_fits_both(cluster, shared):
    """Test that launch/scaling.sh on a tiny grid measures 2 ranks here and 2 ranks on two
    hosts of the cluster (already up: the script leaves it up), and fits a latency and a
    bandwidth to each link."""
    proc = subprocess.run(["bash", "launch/scaling.sh"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600,
                          env={**os.environ, "OUT": str(shared), "HOSTS": "2", "REPEATS": "3",
                               "SIZES": "1024 65536 1048576", "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    here = json.loads((shared / "shm-2.json").read_text())
    across = json.loads((shared / "tcp-2.json").read_text())
    assert (here["ranks"], len(here["hosts"]), across["ranks"]) == (2, 1, 2)
    assert across["hosts"] == ["node1", "node2"] and across["engine"] == "mpi"
    assert [r["bytes"] for r in across["rows"]] == [1024, 65536, 1048576]
    assert all(r["median_s"] > 0 and r["repeats"] == 3 for r in across["rows"])
    links = {k["name"]: k for k in json.loads((shared / "scaling.json").read_text())["links"]}
    for name in ("this machine, shm", "this machine, tcp"):
        assert links[name]["alpha"] > 0 and links[name]["beta"] > 0, links[name]
    assert (shared / "scaling.png").is_file()
    assert "## The fit" in (shared / "scaling.md").read_text()
    assert subprocess.run(["bash", "launch/local-cluster.sh", "status"],
                          capture_output=True).returncode == 0  # left as it was found
