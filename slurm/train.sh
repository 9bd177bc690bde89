#!/usr/bin/env bash
# Train with hvdl under Slurm: one task per GPU (or per CPU slice), Horovod ring over all tasks.
#
#   sbatch slurm/train.sh --model dbn_mnist --epochs 50           # from the repository root
#   sbatch --nodes=4 slurm/train.sh --model lenet5                 # 16 tasks on 4 nodes
#   sbatch --gpus-per-node=4 slurm/train.sh --model lenet5         # GPUs, without editing below
#
# Arguments go to `python -m hvdl.train` unchanged; sbatch options before the script name
# override the #SBATCH lines. On a GPU cluster remove one '#' from the --gpus-per-node line (or
# pass it to sbatch) so each of the 4 tasks gets its GPU. Slurm does not create the output
# folder, and a job without it fails silently: `mkdir -p results/slurm` once. Sizing, multi-node
# runs and site set-up: slurm/README.md.
#
# Time limits: two minutes before the limit Slurm sends SIGUSR1 to this shell, which passes it
# to the tasks (srun forwards USR1 as is; a TERM would make srun kill them), waits for them to
# save a checkpoint and exit, and requeues the job. The requeued job (SLURM_RESTART_COUNT > 0)
# starts with `--resume auto` and appends to the same output file.
#
# Environment:
#   HVDL_ENV       a site file to `source` instead of activating <submit dir>/.venv, e.g. one
#                  that runs `module load ...` and activates an environment (slurm/README.md)
#   HVDL_VENV      the environment to activate otherwise    (default: <submit dir>/.venv)
#   HVDL_SRUN_MPI  srun's MPI plugin, pmix or pmi2           (default: pmix)
#
#SBATCH --job-name=hvdl
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
##SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --output=results/slurm/%x-%j.out
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
set -o pipefail  # not -e: the tasks' exit status is read below; not -u: module files trip it

cd "$SLURM_SUBMIT_DIR" || exit 1
if [[ -n ${HVDL_ENV:-} ]]; then
    source "$HVDL_ENV"
elif [[ -f ${HVDL_VENV:-.venv}/bin/activate ]]; then
    source "${HVDL_VENV:-.venv}/bin/activate"
fi

# hvdl sets torch's threads from SLURM_CPUS_PER_TASK; OpenMP and srun need telling (srun of
# Slurm 22.05 does not inherit the job's --cpus-per-task; SRUN_CPUS_PER_TASK passes it on).
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1}

resume=()
((${SLURM_RESTART_COUNT:-0} > 0)) && resume=(--resume auto)
requeue=0
trap 'echo "hvdl: time limit near, checkpointing and requeueing job $SLURM_JOB_ID"
      requeue=1; kill -USR1 "$tasks"' USR1

echo "hvdl: job $SLURM_JOB_ID start $((${SLURM_RESTART_COUNT:-0} + 1)), $SLURM_NTASKS tasks" \
    "on $SLURM_JOB_NODELIST: $(date -Is)"
srun --mpi="${HVDL_SRUN_MPI:-pmix}" python -m hvdl.train "${resume[@]}" "$@" &
tasks=$!
wait "$tasks"
status=$?
if ((requeue)); then  # the signal cut `wait` short: wait for the checkpoint, then requeue
    wait "$tasks"
    status=$?
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
