"""Start real multi-process jobs from tests: horovodrun (Gloo or MPI), mpirun, torchrun, or plain
python."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

try:
    import psutil
except ImportError:  # only the tests that look for a job's processes need it
    psutil = None

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def job_env(**extra: str) -> dict[str, str]:
    """Environment for a child job: one torch thread per rank, Open MPI allowed as root, and
    Python's fault handler on, so that a process that aborts or crashes shows where each of its
    threads was."""
    env = dict(os.environ)
    env.update({
        "HVDL_THREADS": "1",
        "PYTHONFAULTHANDLER": "1",
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "OMPI_MCA_rmaps_base_oversubscribe": "1",
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    })
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


class _Streams:
    """sys.stdout and sys.stderr written to memory inside a `with`; `readouterr` as capsys's."""

    def __enter__(self) -> _Streams:
        self._saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self._out, self._err = io.StringIO(), io.StringIO()
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stdout, sys.stderr = self._saved

    def readouterr(self) -> tuple[str, str]:
        out, err = self._out.getvalue(), self._err.getvalue()
        self._out.seek(0), self._out.truncate(), self._err.seek(0), self._err.truncate()
        return out, err


def run_hvdl(argv: list[str], capture=None, **env: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `hvdl ARGV` run by its `main` in this process, with `env`
    added to the environment while it runs. Spares a case the 2 to 4 s of a new interpreter
    importing torch (and torch._dynamo, once a run builds its optimizer).

    What it writes is caught by `capture`, pytest's capsys or capfd, or by swapping sys.stdout
    and sys.stderr where none is at hand (a module's fixture). A warning that a process of its
    own would print fails it, as the extra line would; the engine it started is shut down after,
    as the process's exit would, and torch's thread count and random state are put back."""
    import torch

    from hvdl import cli, dist

    threads = torch.get_num_threads()
    with (contextlib.nullcontext(capture) if capture else _Streams()) as streams, \
            pytest.MonkeyPatch.context() as patch, torch.random.fork_rng(devices=[]), \
            warnings.catch_warnings(record=True) as caught:
        for name, value in env.items():
            patch.setenv(name, value)
        warnings.simplefilter("default")  # what a new process shows, and more:
        streams.readouterr()
        try:
            status = cli.main(argv)
        except SystemExit as done:
            status = done.code
        finally:
            dist.shutdown()
            torch.set_num_threads(threads)
        out, err = streams.readouterr()
    hidden = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
    shown = [w for w in caught if not issubclass(w.category, hidden)]  # a process hides these
    assert not shown, [str(w.message) for w in shown]
    return status, out, err


def check_hvdl(argv: list[str], **env: str) -> str:
    """stdout of `hvdl ARGV` run in this process by `run_hvdl`, failing the test with its output
    unless it ends with status 0: for the commands that are not themselves what a test checks,
    a reference run, a resume, a one-process eval. One torch thread, as job_env gives a
    process."""
    status, out, err = run_hvdl(argv, **{"HVDL_THREADS": "1", **env})
    assert status == 0, (f"hvdl failed ({status}): hvdl {' '.join(argv)}\n"
                         f"--- stdout\n{out[-4000:]}\n--- stderr\n{err[-4000:]}")
    return out


def train_here(args: list[str], **env: str) -> str:
    """`check_hvdl` of the run `python ARGS` (`-m hvdl.train ...`, as the tests' jobs take it)."""
    assert args[:2] == ["-m", "hvdl.train"], args
    return check_hvdl(["train", *args[2:]], **env)


def run_job(np: int, args: list[str], launcher: str = "gloo", timeout: float = 300,
            cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """Run a job to completion and return it (stdout and stderr captured as text, decoded as
    written: text mode would turn a carriage return into a newline, hiding a progress bar)."""
    proc = subprocess.run(launch_command(np, args, launcher), cwd=cwd or ROOT,
                          env=job_env(**env), capture_output=True, timeout=timeout)
    proc.stdout, proc.stderr = (proc.stdout.decode(errors="replace"),
                                proc.stderr.decode(errors="replace"))
    return proc


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


def snapshot_checkpoints(run_dir: Path) -> dict[str, tuple[int, int]]:
    """{file name: (inode, mtime_ns)} of every checkpoint in `run_dir` now, to compare after."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in (run_dir / "checkpoints").glob("step-*.pt")}


def checkpoint_step(name: str) -> int:
    """The run's step in a checkpoint's name, step-000000012.pt -> 12."""
    return int(name.removeprefix("step-").removesuffix(".pt"))


def assert_resumed(output: str, run_dir: Path, before: dict[str, tuple[int, int]],
                   step: int | None = None, *, took_steps: bool = True) -> None:
    """Fail unless the run whose `output` this is resumed from the checkpoint of `step` (default:
    the newest in `before`, a `snapshot_checkpoints` of `run_dir` taken before it started): it
    said so, left every checkpoint in `before` as it was (same inode and mtime), and every
    checkpoint it wrote is of a later step, the first of them included (a run retrained from
    scratch writes the early ones again). `took_steps=False`: it wrote none."""
    assert before, f"no checkpoint under {run_dir} to resume from"
    step = max(map(checkpoint_step, before)) if step is None else step
    source = run_dir / "checkpoints" / f"step-{step:09d}.pt"
    assert f"resumed from {source}" in output, (
        f"no line 'resumed from {source}' in the output\n{output[-3000:]}")
    after = snapshot_checkpoints(run_dir)
    changed = sorted(name for name, stat in before.items() if after.get(name) != stat)
    assert not changed, f"checkpoints up to step {step} rewritten or removed: {changed}"
    written = sorted(map(checkpoint_step, set(after) - set(before)))
    if took_steps:
        assert written, f"the resumed run wrote no checkpoint after step {step}"
        assert written[0] > step, f"the resumed run began at or before step {step}: {written}"
    else:
        assert not written, f"the resumed run took steps: it wrote checkpoints {written}"
