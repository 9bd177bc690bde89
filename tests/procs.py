"""Start real multi-process jobs from tests: horovodrun (Gloo or MPI), mpirun, torchrun, or plain
python."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:
    import psutil
except ImportError:  # only the tests that look for a job's processes need it
    psutil = None

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def job_env(**extra: str) -> dict[str, str]:
    """Environment for a child job: one torch thread per rank, Open MPI allowed as root."""
    env = dict(os.environ)
    env.update({
        "HVDL_THREADS": "1",
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "OMPI_MCA_rmaps_base_oversubscribe": "1",
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    })
    env.update(extra)
    return env


def launch_command(np: int, args: list[str], launcher: str = "gloo") -> list[str]:
    """The command line that runs `python <args>` on `np` ranks.

    launcher: "gloo" (horovodrun --gloo), "mpi" (horovodrun --mpi), "mpirun", "torchrun" (on a
    free local port), or "python" (a single plain process; np must be 1).
    """
    python = [sys.executable, *args]
    if launcher == "python":
        assert np == 1
        return python
    if launcher == "torchrun":  # torchrun takes `-m module` or a script, as python does
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(np), *args]
    if launcher == "mpirun":
        return ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(np),
                "--bind-to", "none", *python]
    flag = {"gloo": "--gloo", "mpi": "--mpi"}[launcher]
    extra = ["--mpi-args=--allow-run-as-root --oversubscribe --bind-to none"] \
        if launcher == "mpi" else []
    return [str(BIN / "horovodrun"), flag, *extra, "-np", str(np), "-H", f"localhost:{np}",
            *python]


def run_job(np: int, args: list[str], launcher: str = "gloo", timeout: float = 300,
            cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """Run a job to completion and return it (stdout and stderr captured as text)."""
    return subprocess.run(launch_command(np, args, launcher), cwd=cwd or ROOT,
                          env=job_env(**env), capture_output=True, text=True, timeout=timeout)


def check_job(np: int, args: list[str], launcher: str = "gloo", **kw) -> str:
    """Run a job, fail the test with its output if it exits non-zero; return stdout."""
    proc = run_job(np, args, launcher, **kw)
    assert proc.returncode == 0, (
        f"job failed ({proc.returncode}): {' '.join(proc.args)}\n"
        f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    return proc.stdout


def start_job(np: int, args: list[str], launcher: str = "gloo", cwd: Path | None = None,
              **env: str) -> subprocess.Popen:
    """Start a job in the background (stdout and stderr piped as text); see `launch_command`."""
    return subprocess.Popen(launch_command(np, args, launcher), cwd=cwd or ROOT,
                            env=job_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_file(pattern: str, folder: Path, proc: subprocess.Popen, timeout: float) -> Path:
    """The first file matching `pattern` under `folder`; fails if `proc` ends or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"job ended ({proc.returncode}) before {pattern} appeared\n"
                                 f"--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no {pattern} under {folder} after {timeout:.0f} s")


def rank_pids(proc: subprocess.Popen, size: int, timeout: float = 60) -> dict[int, int]:
    """{rank: pid} of the `hvdl` worker processes the launcher `proc` started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {}
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if "hvdl.train" not in child.cmdline() or child.name() == "sh":
                    continue
                environ = child.environ()
            except psutil.Error:
                continue
            rank = environ.get("HOROVOD_RANK", environ.get("OMPI_COMM_WORLD_RANK"))
            if rank is None and "TORCHELASTIC_RUN_ID" in environ:  # a torchrun worker
                rank = environ.get("RANK")
            if rank is not None:
                found[int(rank)] = child.pid
        if len(found) == size:
            return found
        time.sleep(0.2)
    raise AssertionError(f"did not find {size} ranks under launcher {proc.pid}")


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    """(status, stdout, stderr) of `proc`, failing the test if it runs past `timeout`."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"job did not end within {timeout} s\n{out[-2000:]}\n{err[-2000:]}")
    return proc.returncode, out, err
