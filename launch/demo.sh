#!/usr/bin/env bash
# Set up (or reuse) the environment, then train LeNet-5 on MNIST with 2 Horovod ranks.
#   bash launch/demo.sh [--KEY VALUE ...]      e.g. --epochs 1
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/launch/setup.sh"
cd "$root"
export HVDL_NP=${HVDL_NP:-2}
exec bash launch/horovodrun.sh --model lenet5 "$@"
