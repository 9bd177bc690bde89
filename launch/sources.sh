#!/usr/bin/env bash
# results/sources: a rank's read throughput and time to its first rows from local Parquet, S3
# and PostgreSQL (python -m hvdl.bench.sources). Starts the servers on 127.0.0.1 (moto's S3
# server; PostgreSQL initdb'd into a temporary folder on a private port, as the postgres user
# when run as root) and stops them again, whatever happens.
#
#   bash launch/sources.sh                       # MNIST's size (60,000 × 784), into results/sources
#   ROWS="60000 340000" bash launch/sources.sh   # and about 1 GB of float32 features
#   TRAIN=1 bash launch/sources.sh               # and an RBM epoch from each, held and streamed
#   TOGETHER=1 bash launch/sources.sh            # and 2 ranks reading at the same time
#   FIRST=1 bash launch/sources.sh               # and launch to first step at 1 and 2 ranks,
#                                                # Spark's store and hvdl.spark.fit included
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-$PWD/.venv/bin/python}
out=${OUT:-results/sources}
rows=${ROWS:-60000}
repeats=${REPEATS:-3}
pgbin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort | tail -1)")
work=$(mktemp -d /tmp/hvdl-sources-XXXXXX)
port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
as_pg() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
s3_port=$(port)
pg_port=$(port)
moto=
cleanup() {
    [[ -n $moto ]] && kill "$moto" 2>/dev/null || true
    [[ -d $work/pg ]] && as_pg "$pgbin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

"$python" -m moto.server -H 127.0.0.1 -p "$s3_port" >"$work/moto.log" 2>&1 &
moto=$!
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3_port
export PGPASSWORD=bench-pg
echo "$PGPASSWORD" >"$work/pw"
[[ $(id -u) == 0 ]] && chown postgres "$work" "$work/pw"
as_pg "$pgbin/initdb" -D "$work/pg" -U bench --auth=scram-sha-256 --pwfile="$work/pw" >/dev/null
as_pg "$pgbin/pg_ctl" -D "$work/pg" -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 -c shared_buffers=1GB" \
    -l "$work/pg.log" -w start >/dev/null
for _ in $(seq 50); do
    "$python" -c "import socket; socket.create_connection(('127.0.0.1', $s3_port), 1)" 2>/dev/null && break
    sleep 0.2
done
"$python" - <<EOF
from pyarrow import fs
fs.S3FileSystem(endpoint_override="127.0.0.1:$s3_port", scheme="http", region="us-east-1",
                allow_bucket_creation=True).create_dir("bench")
EOF
for n in $rows; do
    "$python" -m hvdl.bench.sources --rows "$n" --repeats "$repeats" --s3 s3://bench/data \
        --postgres "postgresql://bench@127.0.0.1:$pg_port/postgres" --folder "$work/files" \
        --out "$out" ${TRAIN:+--train} ${FIRST:+--first-step --spark} ${TOGETHER:+--together} \
        ${NAME:+--name "$NAME"}
done
