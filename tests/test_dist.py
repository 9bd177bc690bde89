"""Launcher detection and per-rank resources (no Horovod job needed)."""

from hvdl.schedule import scaled_lr
from hvdl.host import cpu_threads, launcher_size


def test_launcher_size_reads_open_mpi_and_slurm_steps():
    """Test that the task count comes from Open MPI, or from Slurm only inside a job step."""
    assert launcher_size({"OMPI_COMM_WORLD_SIZE": "4"}) == (4, "OMPI_COMM_WORLD_SIZE")
    assert launcher_size({"SLURM_NTASKS": "8", "SLURM_STEP_ID": "0"}) == (8, "SLURM_NTASKS")
    assert launcher_size({"SLURM_NTASKS": "8"}) == (1, None)  # the batch script, not a step
    assert launcher_size({}) == (1, None)


def test_threads_follow_slurm_then_local_ranks():
    """Test that torch threads come from HVDL_THREADS, then SLURM_CPUS_PER_TASK, then cores."""
    assert cpu_threads(2, {"HVDL_THREADS": "3", "SLURM_CPUS_PER_TASK": "5"}) == 3
    assert cpu_threads(2, {"SLURM_CPUS_PER_TASK": "5"}) == 5
    assert cpu_threads(64, {}) == 1


def test_learning_rate_warms_up_to_the_scaled_rate():
    """Test that the rate starts at the single-rank rate and reaches rate × ranks."""
    assert scaled_lr(0.1, 4, step=0, warmup_steps=10) == 0.1
    assert abs(scaled_lr(0.1, 4, step=5, warmup_steps=10) - 0.25) < 1e-12
    assert scaled_lr(0.1, 4, step=10, warmup_steps=10) == 0.4
    assert scaled_lr(0.1, 4, step=0, warmup_steps=10, scaling="none") == 0.1
