#!/usr/bin/env bash
# TensorBoard over hvdl's run folders.
#
#   launch/tensorboard.sh                     # http://127.0.0.1:6006
#   HVDL_TB_HOST=0.0.0.0 launch/tensorboard.sh --reload_interval 10
#
# Extra arguments go to tensorboard. On a cluster keep the default host and tunnel the port:
# ssh -L 6006:127.0.0.1:6006 login-node. Activates <repo>/.venv (or HVDL_VENV) unless a
# virtual environment is already active.
#
# Environment:
#   HVDL_LOGDIR   folder of run folders   (default: results/runs)
#   HVDL_TB_HOST  address to listen on    (default: 127.0.0.1)
#   HVDL_TB_PORT  port                    (default: 6006)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/activate.sh"
exec tensorboard --logdir "${HVDL_LOGDIR:-results/runs}" --host "${HVDL_TB_HOST:-127.0.0.1}" \
    --port "${HVDL_TB_PORT:-6006}" "$@"
