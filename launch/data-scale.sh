#!/usr/bin/env bash
# The data layer at scale, on a generated 6.6 GB dataset (launch/synthetic-data.py): peak memory
# per rank at 1, 2 and 4 ranks held in memory and streamed, time to the first step, and samples/s
# streamed against held for LeNet-5 and the 784-500 RBM, the two modes interleaved.
#   bash launch/data-scale.sh > results/data/scale.md
# Environment: HVDL_SCRATCH (default /tmp/hvdl-big) for the dataset, HVDL_REPEATS (default 3)
# for the throughput runs, HVDL_BUFFER_MB (default 512) for the stream buffer. Run folders:
# results/runs/data-scale-<time>/.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/activate.sh"
cd "$root"
export HVDL_THREADS=1 OMPI_MCA_rmaps_base_oversubscribe=1
scratch=${HVDL_SCRATCH:-/tmp/hvdl-big}
repeats=${HVDL_REPEATS:-3}
buffer=${HVDL_BUFFER_MB:-512}
out=results/runs/data-scale-$(date -u +%Y%m%d-%H%M%S)
python launch/synthetic-data.py "$scratch" >&2
data=(--data.path "$scratch/x.npy" --data.label "$scratch/y.npy" --data.buffer_mb "$buffer")
train() {  # train NAME NP OPTIONS...: one run into $out/NAME
    local name=$1 np=$2
    shift 2
    HVDL_NP=$np bash launch/horovodrun.sh "${data[@]}" --results_dir "$out/$name" "$@" >&2
}
for np in 1 2 4; do
    for memory in device stream; do
        train "memory-$memory-np$np" "$np" --model lenet5 --epochs 1 --max_steps 200 \
            --data.memory "$memory" --log_every 100
    done
done
for ((r = 1; r <= repeats; r++)); do
    for memory in device stream; do
        train "lenet5-$memory-$r" 2 --model lenet5 --epochs 1 --max_steps 1500 \
            --data.memory "$memory" --log_every 500
        train "rbm-$memory-$r" 2 --model rbm_mnist --rbm.pretrain_epochs 1 --max_steps 3000 \
            --data.memory "$memory" --log_every 1000
    done
done
size=$(du -b "$scratch/x.npy" | cut -f1)
echo "# The data layer at scale"
echo
echo "\`bash launch/data-scale.sh\`, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores," \
    "$(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -n); dataset $scratch/x.npy," \
    "$size bytes of float32 features; stream buffer $buffer MB; one torch thread per rank."
echo
echo "## Memory per rank and time to the first step (LeNet-5, 200 steps)"
echo
python -m hvdl.report --compare data.memory --metrics first_step_s,peak_rss_mb \
    --data rows.train,memory,load_seconds,rss_mb "$out"/memory-*/*
echo
echo "## Samples/s, streamed and held (2 ranks, interleaved)"
echo
python -m hvdl.report --compare data.memory --metrics train.0.samples_per_s,pretrain1.0.samples_per_s \
    "$out"/lenet5-*/* "$out"/rbm-*/*
