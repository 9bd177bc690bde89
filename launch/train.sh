#!/usr/bin/env bash
# Train in one plain process, no launcher: a first try, a debugger, one GPU.
#
#   launch/train.sh --model lenet5 --epochs 1
#
# Arguments go to `python -m hvdl.train` unchanged. Activates <repo>/.venv (or HVDL_VENV) unless
# a virtual environment is already active.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/activate.sh"
exec python -m hvdl.train "$@"
