"""Hosts on this machine for multi-host tests: launch/local-cluster.sh as a pytest fixture.

    launch/local-cluster.sh start 3 && python -m pytest tests/test_multihost.py

The `cluster` fixture (session-scoped, made visible to every test by conftest.py) starts node1..
node3 once, each with its own address, hostname, /tmp, sshd and slurmd, and stops them when the
session ends, whatever happened. Where this machine cannot run them (not root, namespaces
refused, packages that apt-get cannot install) the tests that use it are skipped with the
script's reason, or fail with it where HVDL_REQUIRE_CLUSTER=1 (as .ci/run sets: CI must not go
green with the cluster's tests unrun). Jobs are started inside a node, as a user logged in there
would.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import psutil
except ImportError:  # only the tests that look for a job's processes need it
    psutil = None
import pytest

from procs import BIN, ROOT, job_env

SCRIPT = ROOT / "launch" / "local-cluster.sh"
NODES = 3  # two for the static jobs, a third that joins an elastic run or takes a requeued job
STATE = Path(os.environ.get("HVDL_CLUSTER_STATE", "/run/hvdl-cluster"))


def cannot_start(what: str, reason: str) -> None:
    """Skip the tests that need `what` (a cluster this machine cannot start), saying why; fail
    them instead where HVDL_REQUIRE_CLUSTER=1, so that a run that must exercise them cannot pass
    without them."""
    if os.environ.get("HVDL_REQUIRE_CLUSTER") == "1":
        pytest.fail(f"{what} could not start and HVDL_REQUIRE_CLUSTER=1 forbids skipping: "
                    f"{reason}", pytrace=False)
    pytest.skip(f"{what} could not start: {reason}")


@dataclass
class Cluster:
    """The running cluster: its nodes, and a folder every node sees (each node's /tmp is its
    own)."""

    nodes: list[str]
    shared: Path

    @property
    def slurm_conf(self) -> Path:
        return STATE / "slurm" / "slurm.conf"

    def env(self, **extra: str) -> dict[str, str]:
        """A job's environment: threads sized by hvdl per host unless HVDL_THREADS is given."""
        env = job_env(SLURM_CONF=str(self.slurm_conf))
        env.pop("HVDL_THREADS")
        env.update(extra)
        return env

    def command(self, node: str, cmd: list[str]) -> list[str]:
        return [str(SCRIPT), "exec", node, "--", *cmd]

    def run(self, node: str, cmd: list[str], timeout: float = 300,
            **env: str) -> subprocess.CompletedProcess:
        """Run `cmd` inside `node` (from the checkout) to completion, output captured."""
        return subprocess.run(self.command(node, cmd), cwd=ROOT, env=self.env(**env),
                              capture_output=True, text=True, timeout=timeout)

    def start(self, node: str, cmd: list[str], **env: str) -> Job:
        """Start `cmd` inside `node` in the background (see `Job`)."""
        return Job(subprocess.Popen(self.command(node, cmd), cwd=ROOT, env=self.env(**env),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT))

    def pids(self, node: str) -> list[int]:
        """Every process inside `node` (they share this machine's process table)."""
        inode = os.stat(f"/run/netns/{node}").st_ino
        found = []
        for proc in psutil.process_iter():
            try:
                if os.stat(f"/proc/{proc.pid}/ns/net").st_ino == inode:
                    found.append(proc.pid)
            except OSError:
                continue
        return found

    def ranks(self, node: str) -> list[int]:
        """The hvdl.train processes (ranks) running inside `node`."""
        found = []
        for pid in self.pids(node):
            try:
                proc = psutil.Process(pid)
                if "hvdl.train" in proc.cmdline() and proc.name() != "sh":
                    found.append(pid)
            except psutil.Error:
                continue
        return found

    def wait_for_ranks(self, node: str, count: int, timeout: float = 60) -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.ranks(node)
            if len(found) >= count:
                return found
            time.sleep(0.2)
        raise AssertionError(f"{count} rank(s) did not start on {node} within {timeout:.0f} s")

    def kill_ranks(self, node: str) -> list[int]:
        """SIGKILL every rank on `node`: the host's ranks die at once, its daemons live on."""
        pids = self.ranks(node)
        for pid in pids:
            with _gone():
                os.kill(pid, signal.SIGKILL)
        return pids

    def link(self, node: str, state: str) -> None:
        """Cut (`down`) or restore (`up`) the cable of `node`."""
        subprocess.run([str(SCRIPT), "link", node, state], check=True, capture_output=True,
                       timeout=30)

    def slurm(self, *args: str) -> str:
        """A Slurm command's stdout (sinfo, scontrol, squeue, scancel) for this cluster."""
        return subprocess.run(list(args), env=self.env(), capture_output=True, text=True,
                              timeout=60).stdout

    def heal(self) -> None:
        """Every cable up; no job, rank or launcher daemon left on any node; Slurm nodes idle."""
        for node in self.nodes:
            self.link(node, "up")
        self.slurm("scancel", "--user=root")
        daemons = {int((STATE / node / name).read_text()) for node in self.nodes
                   for name in ("holder.pid", "sshd.pid")}
        daemons |= {int(p.read_text()) for p in STATE.glob("slurm/node*/slurmd.pid")}
        for node in self.nodes:
            for pid in self.pids(node):
                with _gone():
                    if pid not in daemons and psutil.Process(pid).name() != "slurmstepd":
                        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            states = set(self.slurm("sinfo", "-h", "-N", "-o", "%T").split())
            if states <= {"idle"}:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"Slurm nodes still {sorted(states)} after 60 s")
            if states & {"down", "down*", "drained", "draining", "drained*"}:
                self.slurm("scontrol", "update", f"NodeName=node[1-{len(self.nodes)}]",
                           "State=RESUME")
            time.sleep(1)


class Job:
    """A command started inside a node: its output (stdout and stderr merged) is collected by a
    thread as it comes, so a test can wait for a line while the job runs."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        fd = self.proc.stdout.fileno()
        while chunk := os.read(fd, 65536):
            self._chunks.append(chunk)

    @property
    def output(self) -> str:
        return b"".join(self._chunks).decode(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        """Return once `text` is in the output; fail if the job ends first or time runs out."""
        self.wait_for_count(text, 1, timeout)

    def wait_for_count(self, text: str, count: int, timeout: float) -> None:
        """Return once `text` is `count` times in the output (see `wait_for`)."""
        deadline = time.monotonic() + timeout
        while self.output.count(text) < count:
            if self.proc.poll() is not None:
                self._reader.join(5)
                if self.output.count(text) >= count:
                    return
                raise AssertionError(f"job ended ({self.proc.returncode}) before '{text}' "
                                     f"appeared {count} time(s)\n{self.output[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"'{text}' not {count} time(s) after {timeout:.0f} s\n"
                                     f"{self.output[-3000:]}")
            time.sleep(0.1)

    def wait_for_file(self, pattern: str, folder: Path, timeout: float) -> Path:
        """The first file matching `pattern` under `folder`, waiting while the job runs."""
        deadline = time.monotonic() + timeout
        while not (found := sorted(folder.glob(pattern))):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.finish(0)
                raise AssertionError(f"no {pattern} under {folder} (job status "
                                     f"{self.proc.returncode})\n{self.output[-3000:]}")
            time.sleep(0.1)
        return found[0]

    def finish(self, timeout: float) -> int | None:
        """The exit status once the job ends, or None (and the job killed) after `timeout`."""
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            status = None
        self._reader.join(5)
        return status


class _gone:
    """Ignore a process that ended on its own before the signal reached it."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, tb) -> bool:
        return kind is not None and issubclass(kind, ProcessLookupError)


def horovodrun(controller: str, hosts: str, np_: int, args: list[str]) -> list[str]:
    """horovodrun over ssh with the Gloo or MPI controller, the ranks talking over eth0."""
    cmd = [str(BIN / "horovodrun"), f"--{controller}", "-np", str(np_), "-H", hosts,
           "--network-interface", "eth0"]
    if controller == "mpi":  # horovodrun passes btl_tcp_if_include itself; a second is refused
        cmd.append("--mpi-args=--allow-run-as-root --bind-to none")
    return [*cmd, sys.executable, *args]


def mpirun(hosts: str, np_: int, args: list[str], export: tuple[str, ...] = ()) -> list[str]:
    """Open MPI's mpirun over ssh, MPI's and its daemons' TCP on eth0; `export`ed variables go
    to every rank (mpirun passes on only those it is told to)."""
    exported = [x for name in ("PATH", "PYTHONUNBUFFERED", *export) for x in ("-x", name)]
    return ["mpirun", "--allow-run-as-root", "--bind-to", "none", "-np", str(np_), "-H", hosts,
            "--mca", "btl_tcp_if_include", "eth0", "--mca", "oob_tcp_if_include", "eth0",
            *exported, sys.executable, *args]


def _script(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def cluster():
    """node1..node3 for the session; skipped (or failed: `cannot_start`), with the script's
    reason, where it cannot start."""
    proc = _script("start", str(NODES))
    reason = (proc.stderr.strip().splitlines() or ["no message"])[-1]
    if proc.returncode == 2:
        cannot_start("the local cluster (launch/local-cluster.sh)", reason)
    try:
        assert proc.returncode == 0, f"launch/local-cluster.sh start failed: {proc.stderr}"
        shared = Path(tempfile.mkdtemp(prefix="hvdl-multihost-", dir="/var/tmp"))
        try:
            yield Cluster(nodes=[f"node{k}" for k in range(1, NODES + 1)], shared=shared)
        finally:
            shutil.rmtree(shared, ignore_errors=True)
    finally:
        _script("stop", timeout=120)
