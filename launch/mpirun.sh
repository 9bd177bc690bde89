#!/usr/bin/env bash
# Train on several ranks with Open MPI's mpirun (Horovod's MPI controller, no horovodrun).
#
#   launch/mpirun.sh --model sae_patches                                  # 2 ranks here
#   HVDL_NP=8 HVDL_HOSTS=node1:4,node2:4 launch/mpirun.sh --model lenet5
#
# Arguments go to `python -m hvdl.train` unchanged. Activates <repo>/.venv (or HVDL_VENV) unless
# a virtual environment is already active; PATH is exported to every rank. Ranks are not bound
# to cores: hvdl sets each rank's torch threads itself.
#
# Environment:
#   HVDL_NP     ranks                                   (default: 2)
#   HVDL_HOSTS  mpirun -H list, host:slots,...          (default: this machine)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/activate.sh"
flags=(-np "${HVDL_NP:-2}" --bind-to none --map-by slot -x PATH)
[[ -n ${HVDL_HOSTS:-} ]] && flags+=(-H "$HVDL_HOSTS")
[[ $(id -u) == 0 ]] && flags+=(--allow-run-as-root)
exec mpirun "${flags[@]}" python -m hvdl.train "$@"
