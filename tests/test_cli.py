"""Entry points answer bad input with one line and exit status 2, leaving no files behind."""

import subprocess
import sys

import pytest

from procs import ROOT, job_env, run_job


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


def test_hvdl_command_lists_subcommands():
    """Test that `hvdl` with an unknown subcommand names the allowed ones and exits 2."""
    proc = run_cli("-m", "hvdl", "frobnicate")
    assert proc.returncode == 2 and "allowed: train, eval, fetch, report, bench" in proc.stderr


def test_launcher_with_more_tasks_than_horovod_sees_is_an_error(tmp_path):
    """Test that srun announcing 2 tasks to a Horovod of size 1 fails with the reason."""
    proc = subprocess.run(
        [sys.executable, "-m", "hvdl.train", "--results_dir", str(tmp_path)], cwd=ROOT,
        env=job_env(SLURM_NTASKS="2", SLURM_STEP_ID="0", SLURM_PROCID="0"),
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "SLURM_NTASKS=2" in line and "Horovod sees one" in line and "--mpi=pmix" in line
    assert not any(tmp_path.iterdir())
