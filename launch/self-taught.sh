#!/usr/bin/env bash
# UFLDL's self-taught learning on MNIST: a sparse autoencoder (784-200, L-BFGS) learns features
# from the digits 5-9 without their labels; `hvdl encode` gives the features of the digits 0-4,
# and a softmax classifier on them is compared with the same classifier on raw pixels. The
# published figures: about 98% against 96% (UFLDL, "Self-Taught Learning").
#   bash launch/self-taught.sh > results/self-taught/README.md
#   bash launch/self-taught.sh --render results/runs/self-taught-<time>   # the page, no training
# Environment: HVDL_NP (default 2) ranks, HVDL_SCRATCH (default /tmp/hvdl-self-taught) for the
# converted digits and the features. Run folders: results/runs/self-taught-<time>/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/activate.sh"
cd "$root"
np=${HVDL_NP:-2}
scratch=${HVDL_SCRATCH:-/tmp/hvdl-self-taught}
out=results/runs/self-taught-$(date -u +%Y%m%d-%H%M%S)
if [[ ${1:-} == --render ]]; then
    out=${2:?--render needs the run folder of an earlier run}
else
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
fi
features=$(ls -d "$out"/features/*/) pixels=$(ls -d "$out"/on-pixels/*/)
coded=$(ls -d "$out"/on-features/*/)
echo "# Self-taught learning on MNIST"
echo
python - "$features" "$coded" "$pixels" <<'PY'
import json
import os
import platform
import sys
from pathlib import Path

features, coded, pixels = (json.loads((Path(p) / "metrics.json").read_text()) for p in sys.argv[1:])
meta = json.loads((Path(sys.argv[1]) / "metadata.json").read_text())
print(f"`bash launch/self-taught.sh`, {meta['world_size']} ranks on {os.cpu_count()} cores "
      f"({platform.node()}), started {meta['started']}, commit {meta['git']['commit'][:7]}.\n")
rows = {p: json.loads((Path(p) / "data.json").read_text()).get("rows", {}) for p in sys.argv[1:]}
sae = features["final"]
print(f"A sparse autoencoder 784-200 (ρ 0.1, λ 3e-3, β 3, L-BFGS {sae['iterations']} "
      f"iterations, {sae['seconds']:.0f} s) learned features from the {rows[sys.argv[1]]['train']:,} "
      "training images of the digits 5-9, their labels unused; `hvdl encode` gave the 200 "
      "features of every image of the digits 0-4. The same softmax regression (λ 1e-4, L-BFGS "
      "up to 100 iterations) was trained on those features and on the raw pixels.\n")
print("| softmax regression on | inputs | training rows | test rows | L-BFGS iterations | "
      "test accuracy | macro F1 | published (UFLDL) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for name, record, inputs, published, path in (
        ("the learned features", coded, 200, "about 98%", sys.argv[2]),
        ("raw pixels", pixels, 784, "about 96%", sys.argv[3])):
    softmax = record["stages"]["softmax"]
    print(f"| {name} | {inputs} | {rows[path]['train']:,} | {rows[path]['test']:,} | "
          f"{softmax['iterations']} | {100 * record['final']['accuracy']:.2f}% | "
          f"{record['final']['macro_f1']:.4f} | {published} |")
gain = coded["final"]["accuracy"] - pixels["final"]["accuracy"]
print(f"\nThe features are {100 * gain:.2f} points better than the pixels (published: about 2). "
      "UFLDL splits the labelled digits 0-4 of MNIST's training set in halves for training "
      "and testing; here the classifiers train on all of them and are tested on the digits "
      "0-4 of MNIST's test set.")
PY
echo
echo "Every run, as \`python -m hvdl.report --compare data.path,layers\` renders it:"
echo
python -m hvdl.report --compare data.path,layers --metrics final.accuracy,final.macro_f1 \
    --data rows.train,rows.test,features "$out"/*/*
