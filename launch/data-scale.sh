#!/usr/bin/env bash
# The data layer at scale, on a generated 6.6 GB dataset (launch/synthetic-data.py): peak memory
# per rank at 1, 2 and 4 ranks held in memory and streamed, time to the first step, and samples/s
# streamed against held for LeNet-5 and the 784-500 RBM, the two modes interleaved.
#   bash launch/data-scale.sh > results/data/scale.md
#   bash launch/data-scale.sh --render results/runs/data-scale-<time>   # the page, no runs
# Environment: HVDL_SCRATCH (default /tmp/hvdl-big) for the dataset, HVDL_ROWS (default
# 2,100,000) its rows, HVDL_REPEATS (default 3) for the throughput runs, HVDL_BUFFER_MB (default
# 512) for the stream buffer. Run folders: results/runs/data-scale-<time>/.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/activate.sh"
cd "$root"
export HVDL_THREADS=1 OMPI_MCA_rmaps_base_oversubscribe=1
scratch=${HVDL_SCRATCH:-/tmp/hvdl-big}
repeats=${HVDL_REPEATS:-3}
buffer=${HVDL_BUFFER_MB:-512}
out=results/runs/data-scale-$(date -u +%Y%m%d-%H%M%S)
[[ ${1:-} == --render ]] && out=${2:?--render needs the run folder of an earlier run}
[[ ${1:-} == --render ]] || python launch/synthetic-data.py "$scratch" \
    --rows "${HVDL_ROWS:-2100000}" >&2
data=(--data.path "$scratch/x.npy" --data.label "$scratch/y.npy" --data.buffer_mb "$buffer")
train() {  # train NAME NP OPTIONS...: one run into $out/NAME
    local name=$1 np=$2
    shift 2
    HVDL_NP=$np bash launch/horovodrun.sh "${data[@]}" --results_dir "$out/$name" "$@" >&2
}
if [[ ${1:-} != --render ]]; then
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
fi
echo "# The data layer at scale"
echo
python - "$out" "$buffer" <<'PY'
import json
import os
import platform
import statistics
import sys
from pathlib import Path

out, buffer = Path(sys.argv[1]), float(sys.argv[2])


def runs(pattern):
    """(metadata, data record, metrics) of each run folder under out/pattern."""
    for d in sorted(out.glob(pattern)):
        (run,) = [r for r in d.iterdir() if r.is_dir()]
        yield [json.loads((run / f).read_text())
               for f in ("metadata.json", "data.json", "metrics.json")]


meta, data, _ = next(runs("memory-*"))
size_mb = data["rows"]["train"] * data["features"] * 4 / 2**20
print(f"`bash launch/data-scale.sh`, {meta['started']}, commit {meta['git']['commit'][:7]}; "
      f"{os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
      f"{platform.node()}, one torch thread per rank, ranks oversubscribed beyond the cores. "
      f"The dataset: {data['rows']['train']:,} rows of {data['features']} float32 features "
      f"({size_mb:,.0f} MiB; launch/synthetic-data.py) and their labels, one NPY file each; "
      f"stream buffer {buffer:.0f} MB.\n")
print("## Memory per rank and time to the first step (LeNet-5, 200 steps)\n")
print("A rank's data part: held in memory, its resident memory after loading less before "
      "(`after − before`); streamed, its peak over the whole run less before loading (`peak − "
      "before`: the stream's buffer and batches, and with them the model, optimizer and "
      "activations, so an upper bound). The goals: held at most 1.1 × dataset / N, streamed at "
      "most the buffer + 300 MiB. Worst rank shown.\n")
print("| ranks | memory | dataset / N MiB | after − before MiB | peak − before MiB | data part / "
      "goal | time to first step s | load s |")
print("|---:|---|---:|---:|---:|---:|---:|---:|")
for meta, data, metrics in sorted(runs("memory-*"), key=lambda r: (r[0]["world_size"],
                                                                  r[1]["memory"])):
    n, mode = meta["world_size"], data["memory"]
    before = {m["rank"]: m["before"] for m in data["rss_mb"]}
    loaded = max(m["after"] - m["before"] for m in data["rss_mb"])
    peak = max(p - before[r] for r, p in enumerate(metrics["peak_rss_mb"]))
    part, goal = (loaded, 1.1 * size_mb / n) if mode == "device" else (peak, buffer + 300)
    print(f"| {n} | {'held' if mode == 'device' else 'streamed'} | {size_mb / n:,.0f} | "
          f"{loaded:,.0f} | {peak:,.0f} | {part:,.0f} / {goal:,.0f}: "
          f"{'met' if part <= goal else 'missed'} | {metrics['first_step_s']:.1f} | "
          f"{data['load_seconds']:.1f} |")
print("\n## Samples/s streamed and held (2 ranks, repeats interleaved)\n")
print("| model | held, each repeat | streamed, each repeat | median held | median streamed | "
      "streamed / held (goal ≥ 0.9) |")
print("|---|---|---|---:|---:|---:|")
for model, key in (("lenet5", "train"), ("rbm", "pretrain1")):
    rates = {}
    for mode in ("device", "stream"):
        rates[mode] = [m[key][0]["samples_per_s"] for *_, m in runs(f"{model}-{mode}-*")]
    held, streamed = (statistics.median(rates[m]) for m in ("device", "stream"))
    print(f"| {'LeNet-5' if model == 'lenet5' else 'RBM 784-500 CD-1'} | "
          f"{', '.join(f'{r:,.0f}' for r in rates['device'])} | "
          f"{', '.join(f'{r:,.0f}' for r in rates['stream'])} | {held:,.0f} | {streamed:,.0f} | "
          f"{streamed / held:.3f} |")
PY
