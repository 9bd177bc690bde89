#!/usr/bin/env bash
# LeNet-5 on 2 ranks under each synchronisation mode, then one comparison table on stdout:
# gradient averaging every step, and parameter averaging every K = 1, 4, 16, 64 local steps.
#   bash launch/sync-modes.sh > results/bench/sync_modes.md
# Extra arguments go to every run (e.g. --epochs 1). Run folders: results/runs/sync-modes-<time>/.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/activate.sh"
cd "$root"
out=results/runs/sync-modes-$(date -u +%Y%m%d-%H%M%S)
modes=("--perf.sync allreduce" "--perf.sync average --perf.sync_every 1"
       "--perf.sync average --perf.sync_every 4" "--perf.sync average --perf.sync_every 16"
       "--perf.sync average --perf.sync_every 64")
for mode in "${modes[@]}"; do
    # shellcheck disable=SC2086  # each mode is several words
    HVDL_NP=2 bash launch/horovodrun.sh --model lenet5 --results_dir "$out" $mode "$@" >&2
    sleep 1  # run folders are named to the second
done
echo "# LeNet-5 on 2 ranks: gradient averaging vs parameter averaging"
echo
echo "\`bash launch/sync-modes.sh\`, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -n)."
echo
python -m hvdl.report --compare perf.sync,perf.sync_every,lr,batch_size,epochs "$out"/*
