#!/usr/bin/env bash
# results/scaling: hvdl's allreduce measured on this machine (2 ranks over shared memory, 2 to
# 4 hosts of launch/local-cluster.sh over TCP), the cost model fitted to it, and every family's
# weak-scaling efficiency projected to 1024 ranks (python -m hvdl.bench.scaling).
#
#   bash launch/scaling.sh                    # into results/scaling/
#   OUT=/var/tmp/s SIZES="1024 65536" REPEATS=3 HOSTS=2 bash launch/scaling.sh  # a tiny grid
#   HOSTS= bash launch/scaling.sh             # shared memory only, no local cluster
#
# OUT must be a folder every host sees (the checkout, /var/tmp): each node has its own /tmp.
# The mpi engine (mpirun) is measured: the fastest of hvdl's engines on CPUs (results/bench).
# One torch thread a rank. The hosts share this machine's cores, so a waiting rank yields its
# core (mpi_yield_when_idle): busy-polling ranks on 3 or 4 hosts of 2 cores wait for the
# scheduler, milliseconds, instead of for the link. Where there are more hosts than cores the
# measurements are a link of their own ("tcp, hosts sharing N cores"): the ring's hops take
# turns on the cores. The local cluster is started here when it is not up, and stopped again
# if this script started it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-results/scaling}
hosts=${HOSTS-2 3 4}
python=${PYTHON:-$PWD/.venv/bin/python}
mkdir -p "$out"
out=$(cd "$out" && pwd -P)
grid=()
[[ -n ${SIZES:-} ]] && grid+=(--sizes $SIZES)
[[ -n ${REPEATS:-} ]] && grid+=(--repeats "$REPEATS")
measure=(-m hvdl.bench.scaling measure "${grid[@]}")

mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 \
    "$python" "${measure[@]}" --link shm --out "$out/shm-2.json"

started=0
if [[ -n $hosts ]] && ! bash launch/local-cluster.sh status >/dev/null 2>&1; then
    HVDL_CLUSTER_SLURM=0 bash launch/local-cluster.sh start 4 >/dev/null
    started=1
fi
stop() { [[ $started == 1 ]] && bash launch/local-cluster.sh stop >/dev/null || true; }
trap stop EXIT
cores=$(nproc)
for n in $hosts; do
    list=$(seq -s, -f 'node%g' 1 "$n")
    link=tcp
    ((n <= cores)) || link="tcp, hosts sharing $cores cores"
    bash launch/local-cluster.sh exec node1 -- mpirun --allow-run-as-root --bind-to none \
        -np "$n" -H "$list" --mca btl_tcp_if_include eth0 --mca oob_tcp_if_include eth0 \
        --mca mpi_yield_when_idle 1 \
        -x PATH -x PYTHONUNBUFFERED "$python" "${measure[@]}" --link "$link" \
        --out "$out/tcp-$n.json"
done
shopt -s nullglob
"$python" -m hvdl.bench.scaling report "$out"/shm-2.json "$out"/tcp-*.json --out "$out"
