#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for hvdl's tests and for trying slurm/train.sh.
#
#   launch/slurm-local.sh          # install if missing, configure, start, wait for the node
#   launch/slurm-local.sh stop     # stop slurmctld and slurmd
#
# Idempotent: with the daemons up and the configuration unchanged a second call only checks that
# the node is up. The node is `localhost` with this machine's CPUs and 90% of its memory (from
# `slurmd -C`); authentication is off (auth/none), so this is for a single trusted machine only.
# Installs Debian's slurmctld, slurmd and slurm-client with apt-get when they are missing.
#
# Exit status: 0 up (one status line on stdout); 2 this machine cannot run it here (not root, no
# apt-get, packages apt-get cannot install, a slurm.conf that hvdl did not write); 1 it tried and
# failed. launch/local-cluster.sh uses the same statuses; the tests skip on 2 (fail under
# HVDL_REQUIRE_CLUSTER=1) and fail on 1. Either way one line on stderr says why.
#
# Environment:
#   SLURM_CONF         the configuration file to write       (default: /etc/slurm/slurm.conf)
#   HVDL_SLURM_SPOOL   state and spool folders go under here (default: /var/spool/slurm-hvdl)
#   HVDL_SLURM_WAIT    seconds to wait for the node to come up (default: 60)
set -euo pipefail

conf=${SLURM_CONF:-/etc/slurm/slurm.conf}
spool=${HVDL_SLURM_SPOOL:-/var/spool/slurm-hvdl}
wait_s=${HVDL_SLURM_WAIT:-60}
logs=/var/log/slurm
marker="# written by hvdl launch/slurm-local.sh"
export SLURM_CONF=$conf

fail() { echo "slurm-local: $2" >&2; exit "$1"; }
running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() {
    local pidfile pid
    for pidfile in "$spool/slurmd.pid" "$spool/slurmctld.pid"; do
        running "$pidfile" || continue
        pid=$(cat "$pidfile")
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    done
}

if [[ ${1:-start} == stop ]]; then
    [[ $(id -u) == 0 ]] || fail 2 "stopping the local cluster needs root"
    stop
    echo "slurm-local: stopped"
    exit 0
fi
[[ ${1:-start} == start ]] || fail 2 "unknown command '$1' (use: start | stop)"

# --- Slurm itself ---------------------------------------------------------------------------
up() { sinfo -h -n localhost -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)$'; }
if [[ $(id -u) != 0 ]]; then
    # Not root: fine if the cluster is already up (someone else started it), else nothing to do.
    if command -v sinfo >/dev/null && up; then
        echo "slurm-local: up (not started here), node localhost $(sinfo -h -n localhost -o %T)"
        exit 0
    fi
    command -v sbatch >/dev/null || fail 2 "Slurm is not installed and installing it needs root"
    fail 2 "the local cluster is not running and starting it needs root"
fi
export PATH=$PATH:/usr/sbin:/sbin  # where the daemons live
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
        || ! command -v sbatch >/dev/null; then
    command -v apt-get >/dev/null || fail 2 "Slurm is not installed and there is no apt-get"
    echo "slurm-local: installing slurmctld slurmd slurm-client with apt-get" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends slurmctld slurmd slurm-client; } >/dev/null \
        || fail 2 "apt-get could not install slurmctld slurmd slurm-client"
fi

# --- the configuration ----------------------------------------------------------------------
# `slurmd -C` prints this machine as a node line; a RealMemory above what slurmd measures would
# drain the node, so leave 10% headroom.
node=$(slurmd -C)
node=${node%%$'\n'*}  # its first line (no `head`: a closed pipe would fail under pipefail)
cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node")
memory=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
[[ -n $cpus && -n $memory ]] || fail 1 "could not read CPUs and RealMemory from slurmd -C: $node"
memory=$((memory * 9 / 10))

wanted=$(cat <<EOF
$marker; edits here are overwritten.
ClusterName=hvdl-local
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/none
CredType=cred/none
MpiDefault=pmix
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
StateSaveLocation=$spool/ctld
SlurmdSpoolDir=$spool/d
SlurmctldPidFile=$spool/slurmctld.pid
SlurmdPidFile=$spool/slurmd.pid
SlurmctldLogFile=$logs/slurmctld.log
SlurmdLogFile=$logs/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
KillWait=10
InactiveLimit=60
EnforcePartLimits=ALL
NodeName=localhost CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
)

if [[ -f $conf ]] && ! grep -qF "$marker" "$conf"; then
    fail 2 "$conf exists and was not written by hvdl; not replacing it (set SLURM_CONF elsewhere)"
fi
if [[ ! -f $conf || $(cat "$conf") != "$wanted" ]]; then
    stop  # the daemons read the configuration at start
    mkdir -p "$(dirname "$conf")" "$spool/ctld" "$spool/d" "$logs"
    echo "$wanted" >"$conf"
fi

# --- the daemons ----------------------------------------------------------------------------
mpis=$(srun --mpi=list 2>&1) || true
grep -qw pmix <<<"$mpis" || fail 1 "this Slurm has no pmix plugin (srun --mpi=list)"
# -c: a controller started here starts with no jobs. Recovering an earlier controller's jobs
# would bring back one left running when that cluster was killed, holding the node for good.
running "$spool/slurmctld.pid" || slurmctld -c -f "$conf" \
    || fail 1 "slurmctld did not start; see $logs/slurmctld.log"
# The node is called localhost whatever the hostname is, so slurmd is told its name.
running "$spool/slurmd.pid" || slurmd -f "$conf" -N localhost \
    || fail 1 "slurmd did not start; see $logs/slurmd.log"

state=""
for _ in $(seq "$wait_s"); do
    state=$(sinfo -h -n localhost -o %T 2>/dev/null || true)
    case $state in
        idle | mixed | allocated | completing) break ;;
        drained* | draining | down*) scontrol update NodeName=localhost State=RESUME 2>/dev/null ;;
    esac
    sleep 1
done
[[ $state =~ ^(idle|mixed|allocated|completing)$ ]] \
    || fail 1 "node localhost is '${state:-unreachable}' after ${wait_s}s; see $logs/"
echo "slurm-local: up, node localhost $state (CPUs=$cpus RealMemory=$memory MB), conf $conf"
