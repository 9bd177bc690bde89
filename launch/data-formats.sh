#!/usr/bin/env bash
# MNIST in every format: `hvdl data convert` writes the IDX files as CSV, Parquet, NPY and HDF5,
# LeNet-5 trains on 2 ranks from each and from the bundled IDX files, and one table on stdout
# gives each run's accuracy and a digest of its final weights (equal digests: equal weights).
#   bash launch/data-formats.sh > results/data/formats.md
# Extra arguments go to every run (e.g. --epochs 1). Converted files go to HVDL_SCRATCH
# (default: /tmp/hvdl-formats); run folders to results/runs/data-formats-<time>/.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/activate.sh"
cd "$root"
scratch=${HVDL_SCRATCH:-/tmp/hvdl-formats}
out=results/runs/data-formats-$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$scratch"
mnist=data/mnist
declare -A suffix=([csv]=csv [parquet]=parquet [npy]=npy [hdf5]=h5)
conversions=()
for fmt in csv parquet npy hdf5; do
    for split in train t10k; do
        name=$([[ $split == train ]] && echo train || echo test)
        dst=$scratch/$name.${suffix[$fmt]}
        started=$EPOCHREALTIME
        python -m hvdl.data convert "$mnist/$split-images-idx3-ubyte.gz" "$dst" --overwrite \
            --label "$mnist/$split-labels-idx1-ubyte.gz" >&2
        took=$(python -c "print(f'{$EPOCHREALTIME - $started:.1f}')")
        conversions+=("| $fmt | $name | $(du -h "$dst" | cut -f1) | $took |")
    done
done
options() {  # the --data options that train on format $1
    local fmt=$1 s=${suffix[$1]}
    echo "--data.path $scratch/train.$s --data.test_path $scratch/test.$s --data.shape 1,28,28"
    case $fmt in
        npy) echo "--data.label $scratch/train.labels.npy --data.test_label $scratch/test.labels.npy" ;;
        hdf5) echo "--data.label labels --data.features features" ;;
        *) echo "--data.label label" ;;
    esac
}
for fmt in idx csv parquet npy hdf5; do
    extra=()
    [[ $fmt != idx ]] && read -r -a extra <<<"$(options "$fmt" | tr '\n' ' ')"
    HVDL_NP=2 bash launch/horovodrun.sh --model lenet5 --results_dir "$out/$fmt" "${extra[@]}" \
        "$@" >&2
done
echo "# MNIST in five formats, LeNet-5 on 2 ranks"
echo
echo "\`bash launch/data-formats.sh $*\`, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores," \
    "$(uname -n). The idx row reads the bundled gzip files; the others read what"
echo "\`hvdl data convert\` wrote from them."
echo
echo "| format | split | size | convert s |"
echo "|---|---|---:|---:|"
printf '%s\n' "${conversions[@]}"
echo
python -m hvdl.report --compare data.path --metrics first_step_s --data format,load_seconds \
    --weights "$out"/*/*
