#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA GPU, run hvdl from this tree and record what it does
# there, in at most 420 s (one 10-minute device command with room to spare); installs nothing,
# needs no network.
#
#   bash launch/gpu-check.sh                  # results in results/gpu/<date>-<host>/
#   bash launch/gpu-check.sh --out DIR        # or: bash launch/gpu-check.sh DIR
#   HVDL_PYTHON=/opt/conda/bin/python bash launch/gpu-check.sh
#
# The python ($HVDL_PYTHON, default python3) needs a CUDA torch and hvdl's other dependencies
# (pyproject.toml); Horovod is not needed. The parts run in order of value, so that a check cut
# short has done the most useful ones; each runs under `timeout` with a cap that is its share of
# the budget HVDL_CHECK_BUDGET_S (420 s; the caps below are for 420 and scale with it; they add
# to 400 s, and the last 20 s are kept for the peak memory, the summary and the archive):
#   mpi runtime        10 s  mpirun/mpiexec on PATH, and mpi4py loading the MPI library
#   modules            15 s  the python modules hvdl imports
#   recipes load       15 s  every recipe in models/ loads
#   gpu tests         110 s  the GPU tests only (below); the mpi ones skip without an MPI runtime
#   lenet5_fast        30 s  the recipe to the end (bf16): test accuracy, seconds to 99%
#   lenet5_fast fp32   30 s  the same without bf16
#   rbm 784-500 CD-1   30 s  rbm_mnist, 3 epochs of batch 100: samples/s of the last epoch
#   rbm ... batch 1000 20 s  the same at batch 1000 (is batch 100 launch-bound?)
#   bench 1 rank       60 s  python -m hvdl.bench: hvdl's loop against a plain PyTorch loop
#   scaling report           results/scaling's projections with this GPU's steps (CPU, seconds)
#   recipe NAME        80 s  in all, shared by every other recipe (lenet5_fast and rbm_mnist ran
#                            above): 100 steps a stage, once each, one process: samples/s
#   peak GPU memory          torch.cuda.max_memory_allocated of every run, and nvidia-smi's
# The GPU tests alone, here or anywhere (a test that needs what the machine lacks skips):
#   python -m pytest -m gpu tests/test_gpu_loop.py tests/test_sync.py tests/test_engines.py
# (`python -m pytest -m gpu` finds the same tests, after importing the whole suite.)
# Into the results folder: summary.md (one line per part: status, figure, time), logs/ (each
# part's output), runs/ (run folders, checkpoints removed), bench/ and machine.txt; and beside
# it, after every part, one archive of it, <folder>.tar.gz (its files under 1 MB, no checkpoints
# nor TensorBoard events): the one file to carry back. On the terminal one line per part, or
# without CUDA a single line: only the parts that need no GPU (mpi runtime, modules, recipes
# load, a lenet5_fast smoke run of 14 steps on the CPU) run, the others are listed as skipped.
# Exit status: 0 when no part failed, 1 when one did, 2 when the python cannot import torch.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${HVDL_PYTHON:-python3}
budget=${HVDL_CHECK_BUDGET_S:-420}
out=""
while (($#)); do
    case $1 in
        --out) out=${2:?gpu-check: --out needs a folder}; shift 2 ;;
        --out=*) out=${1#--out=}; shift ;;
        -h | --help) sed -n '2,/^set -euo/{/^set/d; s/^# \{0,1\}//; p}' "$0"; exit 0 ;;
        -*) echo "gpu-check: unknown option $1; allowed: --out DIR, or DIR alone" >&2; exit 2 ;;
        *) out=$1; shift ;;
    esac
done
host=${HOSTNAME:-$(uname -n)}
host=${host%%.*}
out=${out:-$root/results/gpu/$(date +%Y%m%d-%H%M)-$host}
mkdir -p "$out/logs" "$out/runs"
out=$(cd "$out" && pwd)
archive=$out.tar.gz
cd "$root"
export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export LC_ALL=C

# --- python helpers -------------------------------------------------------------------------

# hvdl.train's main, then this process's peak GPU memory into $HVDL_CHECK_PEAK.
read -r -d '' TRAIN_PY <<'EOF' || true
import os
import sys

import torch

from hvdl.train import main

try:
    status = main(sys.argv[1:])
finally:
    if torch.cuda.is_available():
        with open(os.environ["HVDL_CHECK_PEAK"], "w") as f:
            f.write(f"{torch.cuda.max_memory_allocated() / 2**20:.1f}\n")
sys.exit(status)
EOF

# The figure of a part, from the files it wrote: one line; exit 3 when it misses its target.
read -r -d '' FIGURES_PY <<'EOF' || true
import csv
import json
import sys
from pathlib import Path


def metrics(folder):
    found = sorted(Path(folder).glob("*/metrics.json"))
    if not found:
        sys.exit("no metrics.json written")
    return json.loads(found[-1].read_text())


def peak(folder):
    path = Path(folder) / "peak_gpu_mb.txt"
    return f"; peak {float(path.read_text()):,.0f} MB on the GPU" if path.is_file() else ""


def lbfgs_rates(value, where=""):
    """'NAME N it/s' for every full-batch L-BFGS report (iterations and seconds) in `value`."""
    if not isinstance(value, dict):
        return []
    if value.get("iterations") and value.get("seconds"):
        return [f"{where or 'L-BFGS'} {value['iterations'] / value['seconds']:,.1f} it/s"]
    return [r for k, v in value.items() for r in lbfgs_rates(v, k)]


def recipe(folder):
    """samples/s of each minibatch stage's last epoch, and L-BFGS iterations/s."""
    found = metrics(folder)
    rates = [f"{name} {history[-1]['samples_per_s']:,.0f} samples/s"
             for name, history in found.items()
             if isinstance(history, list) and history and isinstance(history[-1], dict)
             and "samples_per_s" in history[-1]]
    rates += lbfgs_rates(found.get("final", {}), "final") + lbfgs_rates(found.get("stages", {}))
    return ", ".join(rates or ["no rate recorded"]) + peak(folder)


def lenet(folder):
    """Final test accuracy, the training seconds, and where 99% was first reached."""
    history = metrics(folder)["train"]
    seconds = [e["seconds"] for e in history]
    accuracy = [e["test"]["accuracy"] for e in history]
    line = (f"{accuracy[-1]:.2%} test accuracy after {len(history)} epochs, "
            f"{sum(seconds):.2f} s training (epochs: "
            f"{', '.join(f'{s:.2f}' for s in seconds)} s)")
    reached = next((i for i, a in enumerate(accuracy) if a >= 0.99), None)
    if reached is None:
        print(line + "; 99% not reached" + peak(folder))
        sys.exit(3)
    taken = sum(seconds[:reached + 1])
    print(f"{line}; 99% after epoch {reached + 1}, {taken:.2f} s of training "
          f"(target: under 1 s){peak(folder)}")


def smoke(folder):
    """The CPU smoke run: its cost must fall."""
    history = metrics(folder)["train"]
    first, last = history[0]["train_cost"], history[-1]["train_cost"]
    print(f"train cost {first:.3f} -> {last:.3f} in {history[-1]['step']} steps, "
          f"test accuracy {history[-1]['test']['accuracy']:.1%}")
    if not last < first:
        sys.exit(3)


def rbm(folder, batch):
    """CD-1's rate in the last of at least 3 epochs (the first pays for CUDA's start-up)."""
    history = metrics(folder)["pretrain1"]
    if len(history) < 3:
        sys.exit(f"{len(history)} epoch(s) recorded, 3 needed")
    last, first = history[-1], history[0]
    steps = last["step"] - history[-2]["step"]
    return (f"{last['samples_per_s']:,.0f} samples/s in epoch {len(history)} ({steps} steps of "
            f"batch {batch} in {last['seconds']:.2f} s; epoch 1: "
            f"{first['samples_per_s']:,.0f}; goal 1,000,000){peak(folder)}")


def bench(path):
    """hvdl against the plain loop at 1 rank, per model."""
    rows = {(r["model"], r["impl"]): r for r in json.loads(Path(path).read_text())["summary"]
            if "samples_per_s" in r and r["ranks"] == 1}
    parts = []
    for model in dict.fromkeys(m for m, _ in rows):
        hvdl, plain = rows.get((model, "hvdl")), rows.get((model, "plain"))
        if hvdl and plain:
            parts.append(f"{model} hvdl {hvdl['samples_per_s']['median']:,.0f} vs plain "
                         f"{plain['samples_per_s']['median']:,.0f} samples/s "
                         f"({hvdl['vs_plain']:.2f})")
    return "; ".join(parts) or "no pair of hvdl and plain runs"


def peaks(out):
    """The largest torch peak of the runs and the benchmark, and nvidia-smi's largest reading."""
    found = {p.parent.name: float(p.read_text())
             for p in Path(out, "runs").glob("*/peak_gpu_mb.txt")}
    bench_json = Path(out, "bench", "bench.json")
    if bench_json.is_file():
        for r in json.loads(bench_json.read_text())["summary"]:
            if "peak_memory_mb" in r:
                found[f"bench {r['model']} {r['impl']}"] = r["peak_memory_mb"]["max"]
    parts = []
    if found:
        top = max(found, key=found.get)
        parts.append(f"torch peak {found[top]:,.0f} MB ({top}), over {len(found)} runs")
    smi = Path(out, "gpu-memory.csv")
    if smi.is_file():
        used = [float(row[-1]) for row in csv.reader(smi.open()) if row and row[-1].strip()
                .replace(".", "", 1).isdigit()]
        if used:
            parts.append(f"nvidia-smi peak used {max(used):,.0f} MiB")
    if not parts:
        sys.exit("no peak recorded")
    return "; ".join(parts)


mode, arg, *more = sys.argv[1:]
if mode in ("lenet", "smoke"):
    {"lenet": lenet, "smoke": smoke}[mode](arg)
else:
    print({"recipe": recipe, "rbm": rbm, "bench": bench, "peaks": peaks}[mode](arg, *more))
EOF

# The modules hvdl imports: failed when a needed one is missing.
read -r -d '' MODULES_PY <<'EOF' || true
import importlib
import sys

NEEDED = ["torch", "numpy", "scipy", "matplotlib", "skimage", "tensorboard", "tqdm", "pyarrow",
          "h5py", "pytest"]
OPTIONAL = {"mpi4py": "the mpi engine", "PIL": "image folders", "horovod": "the horovod engine",
            "psutil": "the fault tests (hvdl reads /proc without it)"}


def missing(names):
    gone = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:
            gone.append(name)
    return gone


needed, optional = missing(NEEDED), missing(OPTIONAL)
line = (f"missing: {', '.join(needed)}" if needed else f"all {len(NEEDED)} needed import")
if optional:
    line += "; absent: " + ", ".join(f"{n} ({OPTIONAL[n]})" for n in optional)
print(line)
sys.exit(1 if needed else 0)
EOF

# The MPI runtime: a launcher on PATH and the library mpi4py loads. One line; exit 0 either way
# (no MPI is a fact about the machine: the mpi GPU tests skip), non-zero only if loading hangs.
read -r -d '' MPI_PY <<'EOF' || true
import shutil

launchers = [name for name in ("mpirun", "mpiexec") if shutil.which(name)]
try:
    from mpi4py import MPI

    # e.g. "Open MPI v4.1.4, package: ..."; Open MPI ends it with a NUL
    library = MPI.Get_library_version().replace("\0", "").strip().split(",")[0].strip()
except Exception as err:  # ImportError, or the library missing behind mpi4py
    library = ""
    why = f"{type(err).__name__}: {err}".splitlines()[0][:120]
where = ", ".join(launchers) + " on PATH" if launchers else "no mpirun or mpiexec on PATH"
if launchers and library:
    print(f"yes: {where}; mpi4py loads {library}")
else:
    print(f"no MPI runtime ({where}; mpi4py: {library or why}): the mpi GPU tests skip")
EOF

# --- parts ----------------------------------------------------------------------------------

rows=()     # the summary's table rows
failed=0 passed=0
part_pid=""
smi_pid=""
started_at=$(date -u '+%Y-%m-%d %H:%M UTC')
quiet=0     # 1: no CUDA, nothing on the terminal until the one line

slug() { tr -c 'A-Za-z0-9_.\n-' '-' <<<"$1"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

write_summary() {
    {
        echo "# GPU check, $started_at"
        echo
        echo "\`bash launch/gpu-check.sh --out $out\` on $host: $machine_line."
        echo "Commit $commit. Each part ran under \`timeout\` within a budget of $budget s."
        echo
        echo "| part | status | figure | time |"
        echo "|---|---|---|---|"
        printf '%s\n' "${rows[@]}"
        echo
        echo "Each part's output is in \`logs/\`, its run folder (checkpoints removed) in"
        echo "\`runs/\`, the benchmark's tables in \`bench/\`, the machine in \`machine.txt\`;"
        echo "all of it but checkpoints, TensorBoard events and files over 1 MB in"
        echo "\`$(basename "$archive")\` beside this folder."
    } >"$out/summary.md"
    pack
}

# pack: the results folder's small files into one archive beside it (rewritten after every part,
# so that a check cut short still leaves one file to carry back).
pack() {
    local parent name
    parent=$(dirname "$out") name=$(basename "$out")
    (cd "$parent" && find "$name" -type f -size -1024k ! -name '*.pt' \
        ! -name 'events.out.tfevents*' | sort | tar -czf "$archive.part" -T -) &&
        mv -f "$archive.part" "$archive"
}

# record NAME STATUS FIGURE TIME: one row of the summary (rewritten at once) and of the terminal.
record() {
    local figure=${3//|//}
    rows+=("| $1 | $2 | ${figure:-—} | ${4:-—} |")
    case $2 in
        ok*) passed=$((passed + 1)) ;;
        failed*) failed=$((failed + 1)) ;;
    esac
    write_summary
    if ((!quiet)); then
        echo "gpu-check: $1: $2${3:+, $3}${4:+ ($4)}"
    fi
}

# run_part NAME CAP_S CMD...: CMD under timeout, its output in logs/NAME.log. Sets status, rc,
# took; status is "out of time" (not run) when the budget has less than 15 s left.
run_part() {
    local name=$1 cap=$2 left
    shift 2
    log=$out/logs/$(slug "$name").log
    left=$((budget - SECONDS))
    if ((left < 15)); then
        status="skipped: out of time (the check's $budget s were spent)" rc=0 took=""
        return
    fi
    local limit=$((cap < left ? cap : left)) start
    start=$(now)
    rc=0
    timeout -k 5 "$limit" "$@" </dev/null >"$log" 2>&1 &
    part_pid=$!
    wait "$part_pid" || rc=$?
    part_pid=""
    took=$(since "$start")
    case $rc in
        0) status=ok ;;
        124 | 137) status="failed: timed out after $limit s"
                   ((limit == cap)) || status+=" (what was left of the budget)" ;;
        *) status="failed: exit status $rc" ;;
    esac
}

# finish NAME [FIGURE_CMD...]: record the part run_part ran; the figure from FIGURE_CMD when it
# ran, else the last line of its log.
finish() {
    local name=$1 figure frc=0
    shift
    if [[ $status == skipped* ]]; then
        record "$name" "$status" "" ""
        return
    fi
    if ((rc == 0)) && (($#)); then
        figure=$("$@" 2>&1) || frc=$?
        if ((frc != 0)); then
            status="failed: below its target"
            [[ $frc == 3 ]] || status="failed: no figure"
        fi
    else
        figure=$(grep -av '^[[:space:]]*$' "$log" | tail -n 1 | sed 's/^=* *//; s/ *=*$//' |
                 cut -c 1-160) || true
    fi
    record "$name" "$status" "$figure" "$took"
}

figures() { "$py" -c "$FIGURES_PY" "$@"; }
drop_weights() { find "$1" -name '*.pt' -type f -delete 2>/dev/null || true; }

# train NAME CAP_S ARGS...: hvdl.train in one process, its run folder in runs/NAME.
train() {
    local name=$1 cap=$2 dir
    shift 2
    dir=$out/runs/$(slug "$name")
    mkdir -p "$dir"
    HVDL_CHECK_PEAK=$dir/peak_gpu_mb.txt run_part "$name" "$cap" \
        "$py" -c "$TRAIN_PY" --dist.backend single --results_dir "$dir" "$@"
    drop_weights "$dir"
    run_dir=$dir
}

# shellcheck disable=SC2317  # called by the traps
cleanup() {
    [[ -z $part_pid ]] || kill "$part_pid" 2>/dev/null || true
    [[ -z $smi_pid ]] || kill "$smi_pid" 2>/dev/null || true
}
trap cleanup EXIT
trap 'cleanup; pack; echo "gpu-check: interrupted; what ran is in $out/summary.md," \
    "$archive" >&2; exit 130' INT TERM

# --- the machine ----------------------------------------------------------------------------

probe_py='import torch
print(torch.__version__, torch.cuda.is_available(), torch.version.cuda or "none",
      torch.cuda.get_device_name(0).replace(" ", "_") if torch.cuda.is_available() else "none",
      torch.cuda.device_count())'
if ! probe=$(timeout 120 "$py" -c "$probe_py" 2>"$out/logs/torch.log"); then
    why=$(tail -n 1 "$out/logs/torch.log")
    echo "gpu-check: $py cannot import torch ($why); set HVDL_PYTHON to a python with torch"
    exit 2
fi
read -r torch_version cuda_ok cuda_version gpu_name gpu_count <<<"$probe"
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null) ]] || commit+=" (dirty)"
if [[ $cuda_ok == True ]]; then
    machine_line="$gpu_count × ${gpu_name//_/ }, torch $torch_version (CUDA $cuda_version)"
else
    machine_line="no CUDA device, torch $torch_version, $(nproc) cores"
    quiet=1
fi
{
    echo "date: $started_at"
    echo "host: $host ($(uname -srm)), $(nproc) cores"
    echo "python: $("$py" -c 'import sys; print(sys.version.split()[0], sys.executable)')"
    echo "torch: $torch_version, CUDA $cuda_version, available $cuda_ok, $gpu_count device(s)"
    echo "commit: $commit"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv 2>&1 || true
    fi
} >"$out/machine.txt"
if [[ $cuda_ok == True ]] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,index,memory.used --format=csv,noheader,nounits -lms 500 \
        >"$out/gpu-memory.csv" 2>/dev/null &
    smi_pid=$!
fi
((quiet)) || echo "gpu-check: $machine_line; results in $out"

# Each part's cap: its share of the budget, given in seconds for 420 s (they add to 400 s; the last
# 20 s are for the peak memory, the summary and the archive).
cap() { echo $(($1 * budget / 420)); }

# --- what needs no GPU ----------------------------------------------------------------------

run_part "mpi runtime" "$(cap 10)" "$py" -c "$MPI_PY"
finish "mpi runtime"

run_part modules "$(cap 15)" "$py" -c "$MODULES_PY"
finish modules

run_part "recipes load" "$(cap 15)" "$py" -c 'from hvdl import config
names = config.recipe_names()
for name in names:
    config.load(name)
print(len(names), "recipes:", *names)'
finish "recipes load"
recipes=()  # every recipe but the two measured on their own above the recipe loop
for name in $(sed -n 's/^[0-9]* recipes: //p' "$log"); do
    [[ $name == lenet5_fast || $name == rbm_mnist ]] || recipes+=("$name")
done

if [[ $cuda_ok != True ]]; then
    train "lenet5_fast CPU smoke" 120 --model lenet5_fast --train_size 4000 --epochs 2
    finish "lenet5_fast CPU smoke" figures smoke "$run_dir"
    gpu_parts=("gpu tests" lenet5_fast "lenet5_fast fp32" "rbm 784-500 CD-1"
               "rbm 784-500 CD-1 batch 1000" "bench 1 rank")
    for name in "${recipes[@]}"; do gpu_parts+=("recipe $name"); done
    gpu_parts+=("peak GPU memory")
    for name in "${gpu_parts[@]}"; do
        record "$name" "skipped: no CUDA device" "" ""
    done
    echo "gpu-check: no CUDA device (torch $torch_version, cuda available: False);" \
        "ran the CPU parts only ($passed ok, $failed failed): $out/summary.md, $archive"
    exit $((failed > 0))
fi

# --- the GPU, most valuable first -----------------------------------------------------------

# The GPU tests alone (the header's list): collecting the whole suite would cost seconds, and
# its CPU tests would pick cuda:0 and fail their bit-exact comparisons.
gpu_tests=(tests/test_gpu_loop.py tests/test_sync.py tests/test_engines.py)
run_part "gpu tests" "$(cap 110)" "$py" -m pytest -m gpu -q -p no:cacheprovider -rfEs \
    "${gpu_tests[@]}"
finish "gpu tests"  # pytest's last line: how many passed, failed, were skipped

train lenet5_fast "$(cap 30)" --model lenet5_fast
finish lenet5_fast figures lenet "$run_dir"

train "lenet5_fast fp32" "$(cap 30)" --model lenet5_fast --perf.bf16 false
finish "lenet5_fast fp32" figures lenet "$run_dir"

# CD-1's rate from the last of 3 epochs (the first pays for CUDA's start-up); at batch 100 a step
# may be bound by kernel launches, so batch 1000 too.
train "rbm 784-500 CD-1" "$(cap 30)" --model rbm_mnist --rbm.pretrain_epochs 3
finish "rbm 784-500 CD-1" figures rbm "$run_dir" 100

train "rbm 784-500 CD-1 batch 1000" "$(cap 20)" --model rbm_mnist --rbm.pretrain_epochs 3 \
    --batch_size 1000
finish "rbm 784-500 CD-1 batch 1000" figures rbm "$run_dir" 1000

run_part "bench 1 rank" "$(cap 60)" "$py" -m hvdl.bench --models lenet5 sae rbm dbn --ranks 1 \
    --variants plain hvdl --repeats 1 --steps 500 --warmup 50 --out "$out/bench"
finish "bench 1 rank" figures bench "$out/bench/bench.json"

# The scaling projections (results/scaling) again with this GPU's compute a step: no device time,
# a few seconds of the CPU; its last line names the folder.
if [[ -f $out/bench/bench.json ]] && compgen -G "results/scaling/tcp-*.json" >/dev/null; then
    run_part "scaling report" 20 "$py" -m hvdl.bench.scaling report \
        results/scaling/shm-2.json results/scaling/tcp-*.json --bench "$out/bench/bench.json" \
        --out "$out/scaling"
    finish "scaling report"
fi

# Every other recipe once, 100 steps a stage (an RBM stack has one stage per layer; L-BFGS
# stages take 25 iterations), the loop's 80 s shared among them.
each=$(($(cap 80) / (${#recipes[@]} > 0 ? ${#recipes[@]} : 1)))
for name in "${recipes[@]}"; do
    train "recipe $name" "$each" --model "$name" --max_steps 100 --rbm.pretrain_epochs 1 \
        --rbm.finetune_epochs 1 --sae.lbfgs_iterations 25 --sae.finetune_iterations 1 \
        --keep_checkpoints 1
    finish "recipe $name" figures recipe "$run_dir"
done

if figure=$(figures peaks "$out" 2>&1); then
    record "peak GPU memory" ok "$figure" ""
else
    record "peak GPU memory" "failed: nothing recorded" "$figure" ""
fi

echo "gpu-check: $passed ok, $failed failed: $out/summary.md, $archive"
exit $((failed > 0))
