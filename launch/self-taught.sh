#!/usr/bin/env bash
# UFLDL's self-taught learning on MNIST: a sparse autoencoder (784-200, L-BFGS) learns features
# from the digits 5-9 without their labels; `hvdl encode` gives the features of the digits 0-4,
# and a softmax classifier on them is compared with the same classifier on raw pixels. The
# published figures: about 98% against 96% (UFLDL, "Self-Taught Learning").
#   bash launch/self-taught.sh > results/self-taught/README.md
# Environment: HVDL_NP (default 2) ranks, HVDL_SCRATCH (default /tmp/hvdl-self-taught) for the
# converted digits and the features. Run folders: results/runs/self-taught-<time>/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/activate.sh"
cd "$root"
np=${HVDL_NP:-2}
scratch=${HVDL_SCRATCH:-/tmp/hvdl-self-taught}
out=results/runs/self-taught-$(date -u +%Y%m%d-%H%M%S)
rm -rf "$scratch" && mkdir -p "$scratch"
mnist=data/mnist
convert() {  # convert SPLIT LABELS NAME: the digits LABELS of MNIST's SPLIT as NAME.npy
    python -m hvdl.data convert "$mnist/$1-images-idx3-ubyte.gz" "$scratch/$3.npy" \
        --label "$mnist/$1-labels-idx1-ubyte.gz" --keep-labels "$2" >&2
}
convert train 5,6,7,8,9 unlabelled
convert train 0,1,2,3,4 train
convert t10k 0,1,2,3,4 test
train() {  # train NAME OPTIONS...
    local name=$1
    shift
    HVDL_NP=$np bash launch/horovodrun.sh --results_dir "$out/$name" "$@" >&2
}
newest() { ls "$out/$1"/*/checkpoints/step-*.pt | tail -1; }
# The features: digits 5-9, their labels unused (UFLDL: 200 hidden units, ρ 0.1, λ 3e-3, β 3).
train features --model sae_mnist --data.path "$scratch/unlabelled.npy" --train_size 0 \
    --layers 0,200
for split in train test; do
    horovodrun --gloo -np "$np" -H "localhost:$np" python -m hvdl.encode \
        --checkpoint "$(newest features)" --out "$scratch/codes-$split" \
        --data.path "$scratch/$split.npy" --data.label "$scratch/$split.labels.npy" >&2
done
# The same softmax regression (L-BFGS, 100 iterations, λ 1e-4) on the features and on pixels.
softmax=(--model stacked_ae_mnist --layers 0,0 --optimizer lbfgs --sae.lbfgs_iterations 100
         --sae.softmax_lam 1e-4 --train_size 0)
train on-features "${softmax[@]}" --data.path "$scratch/codes-train/part-*.parquet" \
    --data.test_path "$scratch/codes-test/part-*.parquet" --data.label label --data.scale none
train on-pixels "${softmax[@]}" --data.path "$scratch/train.npy" \
    --data.label "$scratch/train.labels.npy" --data.test_path "$scratch/test.npy" \
    --data.test_label "$scratch/test.labels.npy" --data.scale unit
echo "# Self-taught learning on MNIST"
echo
echo "\`bash launch/self-taught.sh\`, $(date -u '+%Y-%m-%d %H:%M UTC'), $np ranks, $(nproc) cores," \
    "$(uname -n); commit $(git rev-parse --short HEAD)."
echo
python -m hvdl.report --compare data.path,layers --metrics final.accuracy,final.macro_f1 \
    --data rows.train,rows.test,features "$out"/*/*
