"""Progress under the launchers without a terminal, with real processes: whole lines under mpirun
(README, "Progress"), none at all with `--progress none`. horovodrun's lines are tested in
test_stages.py, sbatch's output file in test_slurm.py."""

import json
import re
import subprocess

import pytest

from procs import ROOT, job_env, launch_command

pytestmark = pytest.mark.slow

# A progress line, whole: stage and epoch, step of total, samples/s, time left, cost.
LINE = re.compile(r"train epoch 1: step (\d+)/(\d+) \(\d+%\), [\d,]+ samples/s, "
                  r"(\d+:\d\d(:\d\d)?|\d+ s) left, cost \d+\.\d{4}")


def run_raw(np_, args, launcher):
    """A finished job with its stdout and stderr as sent: text mode would turn \\r into \\n."""
    proc = subprocess.run(launch_command(np_, args, launcher), cwd=ROOT, env=job_env(),
                          capture_output=True, timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(),
                                       proc.stderr.decode())


def progress_lines(text):
    return [line for line in text.splitlines() if ": step " in line]


def test_progress_comes_in_whole_lines_under_mpirun(tmp_path):
    """Test that under mpirun progress is whole lines on rank 0's stdout, without carriage
    returns, naming the stage, epoch, step of total, samples/s, time left and cost, at most one
    every 10 s besides the epoch's last."""
    proc = run_raw(2, ["-m", "hvdl.train", "--train_size", "4000", "--epochs", "1",
                       "--log_every", "5", "--results_dir", str(tmp_path)], "mpirun")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert out.splitlines()[0] == "hvdl: engine mpi (started by mpirun; auto)", out[:300]
    assert "\r" not in out + proc.stderr, proc.stderr[-1000:]  # no bar
    lines = progress_lines(out)
    assert lines and all(LINE.fullmatch(line) for line in lines), lines
    assert LINE.fullmatch(lines[-1]).group(1, 2) == ("31", "31"), lines  # 2,000 rows / 64
    (run_dir,) = tmp_path.iterdir()
    (epoch,) = json.loads((run_dir / "metrics.json").read_text())["train"]
    # 7 steps log (every 5th and the last): one line, then one a 10 s, then the last.
    assert len(lines) <= 2 + epoch["seconds"] // 10 and len(lines) < 7, (epoch["seconds"], lines)


def test_progress_none_prints_no_progress_but_the_run_s_lines(tmp_path):
    """Test that `--progress none` prints no progress line or bar, and still the run's lines:
    engine, run folder, data, the epoch's summary and test figures."""
    proc = run_raw(1, ["-m", "hvdl.train", "--train_size", "640", "--epochs", "1",
                       "--log_every", "1", "--progress", "none", "--results_dir", str(tmp_path)],
                   "python")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert not progress_lines(out), out  # lines mode would print steps 1 and 10 of 10
    assert "\r" not in out + proc.stderr and "it/s" not in proc.stderr, proc.stderr  # no bar
    lines = out.splitlines()
    assert lines[0] == "hvdl: engine single (no launcher; auto)", out
    assert lines[1].startswith("hvdl: lenet5 (cnn) on 1 rank(s)"), out
    assert any(line.startswith("hvdl: data: mnist (bundled)") for line in lines), out
    assert re.search(r"^train epoch 1: train cost \d+\.\d{4}, .* test accuracy \d+\.\d+%$", out,
                     re.M), out
