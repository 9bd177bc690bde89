#!/usr/bin/env bash
# Train on several ranks with Horovod's launcher, on this machine or on listed hosts.
#
#   launch/horovodrun.sh --model dbn_mnist --epochs 50                    # 2 ranks here
#   HVDL_NP=8 HVDL_HOSTS=node1:4,node2:4 launch/horovodrun.sh --model lenet5
#   HVDL_CONTROLLER=gloo launch/horovodrun.sh --model lenet5             # no MPI job
#
# Arguments go to `python -m hvdl.train` unchanged. Activates <repo>/.venv (or HVDL_VENV) unless
# a virtual environment is already active. As root, Open MPI is told that root is intended.
#
# Environment:
#   HVDL_NP          ranks                                   (default: 2)
#   HVDL_HOSTS       horovodrun -H list, host:slots,...      (default: localhost:HVDL_NP)
#   HVDL_CONTROLLER  mpi or gloo                             (default: horovodrun's choice, MPI)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/activate.sh"
np=${HVDL_NP:-2}
flags=(-np "$np" -H "${HVDL_HOSTS:-localhost:$np}")
[[ -n ${HVDL_CONTROLLER:-} ]] && flags+=("--$HVDL_CONTROLLER")
[[ $(id -u) == 0 ]] && flags+=(--mpi-args=--allow-run-as-root)
exec horovodrun "${flags[@]}" python -m hvdl.train "$@"
