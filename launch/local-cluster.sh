#!/usr/bin/env bash
# A cluster of 2 to 4 hosts on this one machine, for hvdl's multi-host tests and for trying
# multi-node launches: each host is a Linux network namespace with its own address, hostname,
# /tmp, /dev/shm, sshd and slurmd; TCP between hosts goes over a bridge.
#
#   launch/local-cluster.sh start 3            # node1..node3 (default 2); idempotent
#   launch/local-cluster.sh status             # one line; exit 0 up, 3 not running, 1 partly
#   launch/local-cluster.sh exec node1 -- horovodrun -np 2 -H node1:1,node2:1 \
#       --network-interface eth0 python -m hvdl.train --model lenet5
#   launch/local-cluster.sh link node2 down    # cut node2's cable (up: plug it back)
#   launch/local-cluster.sh stop               # everything start made is gone
#
# The hosts: bridge hvdl-br0 with $NET.254/24 on this machine's side, a veth pair per node
# (hvdl-nodeK here, eth0 with $NET.K inside). Each node runs in its network namespace plus new
# UTS and mount namespaces (entered with nsenter, not `ip netns exec`, which remounts /sys and
# kills slurmd): hostname nodeK, /etc/netns/nodeK/hosts (every node and `hvdl-host`, this
# machine's side) bound over /etc/hosts, and private /tmp and /dev/shm, as real compute nodes
# have (two nodes sharing /tmp make PMIx fail). The rest of the file system is shared, so every
# node sees the same checkout, virtual environment and data; a checkout under /tmp (and any
# folder under /tmp named in $HVDL_CLUSTER_SHARE, colon-separated) is bound at the same path into
# every node's private /tmp when the node starts.
#
# ssh: one sshd per node (Debian's openssh-server, installed when missing) with its own config,
# host key, pid file and authorized key, root login by key only. horovodrun and mpirun call
# plain `ssh`, so a marked block at the top of root's ~/.ssh/config (removed by stop) gives the
# cluster's key, known hosts (the nodes' keys, written by start: no prompt, nothing added to
# ~/.ssh/known_hosts), and keepalives: ssh gives up on a host after 6 s of silence and says
# "Timeout, server nodeK not responding", which is how horovodrun and mpirun learn of a lost host.
# From this machine the names resolve through the same block; inside the nodes through
# /etc/hosts.
#
# Slurm: slurmctld on this machine, cluster hvdl-nodes, ports $SLURM_PORT and $SLURM_PORT+1 (so a
# launch/slurm-local.sh cluster on the default ports can run beside it), configuration in
# $STATE/slurm/slurm.conf (not /etc/slurm): point SLURM_CONF at it, as `exec` does. One slurmd
# per node; a node silent for 10 s is marked down (SlurmdTimeout), and its jobs end or requeue.
# Authentication is off (auth/none): for a single trusted machine only.
#
# Exit status: 0 done (one status line on stdout); 2 this machine cannot run it (not root, no
# apt-get, namespaces refused, the subnet already in use, bad arguments); 1 it tried and failed.
# Either way one line on stderr says why.
#
# Environment:
#   HVDL_CLUSTER_STATE  keys, configs, logs, pid files (default: /run/hvdl-cluster)
#   HVDL_CLUSTER_NET    the first three octets of the /24 to use (default: 10.213.0)
#   HVDL_CLUSTER_SLURM  1: also start Slurm; 0: ssh only          (default: 1)
#   HVDL_CLUSTER_SLURM_PORT  slurmctld's port; slurmd's is one more (default: 6917)
# shellcheck disable=SC2015  # `A && B || C` here means C when A or B fails, as intended
set -Eeuo pipefail
trap 'echo "local-cluster: failed at line $LINENO: $BASH_COMMAND" >&2; exit 1' ERR

state=${HVDL_CLUSTER_STATE:-/run/hvdl-cluster}
net=${HVDL_CLUSTER_NET:-10.213.0}
with_slurm=${HVDL_CLUSTER_SLURM:-1}
port=${HVDL_CLUSTER_SLURM_PORT:-6917}
bridge=hvdl-br0
checkout=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
share=${HVDL_CLUSTER_SHARE:+$HVDL_CLUSTER_SHARE:}$checkout
export SLURM_CONF=$state/slurm/slurm.conf
export PATH=$PATH:/usr/sbin:/sbin  # sshd, slurmd, slurmctld
begin="# >>> hvdl launch/local-cluster.sh (removed by 'local-cluster.sh stop') >>>"
end="# <<< hvdl launch/local-cluster.sh <<<"

fail() { echo "local-cluster: $2" >&2; exit "$1"; }
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
node_count() { cat "$state/nodes" 2>/dev/null || echo 0; }
ssh_home() { getent passwd "$(id -un)" | cut -d: -f6; }  # ssh reads the passwd entry, not $HOME

# Run "$@" inside node $1's namespaces (network, hostname, mounts), in the caller's folder.
in_node() {
    local dir=$state/$1
    shift
    alive "$dir/holder.pid" || return 1
    nsenter -t "$(cat "$dir/holder.pid")" --net --uts --mount --wd="$PWD" -- "$@"
}

# --- stop -----------------------------------------------------------------------------------

kill_all() {  # TERM, then KILL, every pid given
    local pid
    (($#)) || return 0
    kill "$@" 2>/dev/null || true
    for _ in $(seq 25); do
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && break; pid=; done
        [[ -z $pid ]] && return 0
        sleep 0.2
    done
    kill -9 "$@" 2>/dev/null || true
}

remove_ssh_block() {  # $1 "tidy": also remove the file and folder if start made them
    local config
    config=$(ssh_home)/.ssh/config
    [[ -f $config ]] && grep -qF "$begin" "$config" || return 0
    sed -i "\|^$begin\$|,\|^$end\$|d" "$config"
    if [[ ${1:-} == tidy && ! -s $config && -f $state/made-ssh-config ]]; then
        rm -f "$config"
        [[ -f $state/made-ssh-dir ]] && rmdir "$(dirname "$config")" 2>/dev/null || true
    fi
}

ours() {  # whether node $1 was made by this script (its hosts file, veth or state folder)
    grep -qsF "hvdl-host" "/etc/netns/$1/hosts" || ip link show "hvdl-$1" >/dev/null 2>&1 \
        || [[ -d $state/$1 ]]
}

stop() {
    local node nodes pids
    alive "$state/slurm/slurmctld.pid" && kill_all "$(cat "$state/slurm/slurmctld.pid")"
    nodes=$(ip netns list 2>/dev/null | grep -oE '^node[0-9]+' || true)
    for node in $nodes; do  # cables first, so that connections to a cut-off node can close
        ours "$node" && ip -n "$node" link set eth0 up 2>/dev/null || true
    done
    for node in $nodes; do
        ours "$node" || continue  # a namespace of that name that this script did not make
        pids=$(ip netns pids "$node" 2>/dev/null || true)
        # shellcheck disable=SC2086
        kill_all $pids
        ip netns del "$node" 2>/dev/null || true
        rm -rf "/etc/netns/$node"
    done
    # A namespace outlives its name while the kernel still holds a closing connection of it;
    # deleting our end of each cable removes the other end with it.
    for node in $(ip -o link show 2>/dev/null | grep -oE 'hvdl-node[0-9]+' | sort -u || true); do
        ip link del "$node" 2>/dev/null || true
    done
    [[ -f $state/made-etc-netns ]] && rmdir /etc/netns 2>/dev/null || true
    ip link show "$bridge" >/dev/null 2>&1 && ip link del "$bridge"
    remove_ssh_block tidy
    [[ -f $state/made-run-sshd ]] && rmdir /run/sshd 2>/dev/null || true
    rm -rf "$state"
}

# --- start: packages, network, nodes --------------------------------------------------------

install_missing() {
    local packages=()
    command -v ip >/dev/null || packages+=(iproute2)
    command -v nsenter >/dev/null && command -v unshare >/dev/null || packages+=(util-linux)
    command -v sshd >/dev/null || packages+=(openssh-server)
    command -v ssh >/dev/null && command -v ssh-keygen >/dev/null || packages+=(openssh-client)
    if [[ $with_slurm == 1 ]]; then
        command -v slurmctld >/dev/null || packages+=(slurmctld)
        command -v slurmd >/dev/null || packages+=(slurmd)
        command -v sbatch >/dev/null || packages+=(slurm-client)
    fi
    ((${#packages[@]})) || return 0
    command -v apt-get >/dev/null || fail 2 "missing ${packages[*]} and there is no apt-get"
    echo "local-cluster: installing ${packages[*]} with apt-get" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${packages[@]}"; } >/dev/null 2>&1 \
        || fail 2 "apt-get could not install ${packages[*]}"
}

check_subnet() {  # the /24 must be ours alone: never touch an address we did not make
    local used
    used=$(ip -o -4 addr show to "$net.0/24" | awk -v b="$bridge" '$2 != b {print $2}')
    [[ -z $used ]] || fail 2 "$net.0/24 is already used by ${used//$'\n'/, }; set HVDL_CLUSTER_NET"
    ip link show "$bridge" >/dev/null 2>&1 || ! ip -o -4 route show to "$net.0/24" | grep -q . \
        || fail 2 "a route to $net.0/24 exists already; set HVDL_CLUSTER_NET"
}

make_network() {
    local err
    if ! ip link show "$bridge" >/dev/null 2>&1; then
        err=$(ip link add "$bridge" type bridge 2>&1) \
            || fail 2 "ip link add $bridge type bridge refused: $err"
        ip addr add "$net.254/24" dev "$bridge"
    fi
    ip link set "$bridge" up
}

write_hosts() {  # /etc/netns/nodeK/hosts: the nodes, and this machine as hvdl-host
    local k n=$1
    {
        echo "127.0.0.1 localhost"
        echo "$net.254 hvdl-host"
        for k in $(seq "$n"); do echo "$net.$k node$k"; done
    }
}

make_node() {  # namespace, cable, address, hosts file, host key, sshd config
    local k=$1 n=$2 node=node$1 dir=$state/node$1 err
    if [[ ! -e /run/netns/$node ]]; then
        err=$(ip netns add "$node" 2>&1) || fail 2 "ip netns add refused: $err"
    fi
    if ip link show "hvdl-$node" >/dev/null 2>&1 && ! ip -n "$node" link show eth0 >/dev/null 2>&1
    then  # a cable left from an earlier namespace of that name
        ip link del "hvdl-$node"
    fi
    if ! ip link show "hvdl-$node" >/dev/null 2>&1; then
        err=$(ip link add "hvdl-$node" type veth peer name eth0 netns "$node" 2>&1) \
            || fail 2 "ip link add type veth refused: $err"
        ip link set "hvdl-$node" master "$bridge" up
    fi
    ip -n "$node" link set lo up
    ip -n "$node" addr replace "$net.$k/24" dev eth0
    ip -n "$node" link set eth0 up
    [[ -d /etc/netns ]] || { mkdir -p /etc/netns && touch "$state/made-etc-netns"; }
    mkdir -p "/etc/netns/$node" "$dir/tmp"
    chmod 1777 "$dir/tmp"
    write_hosts "$n" >"/etc/netns/$node/hosts"
    [[ -f $dir/ssh_host_ed25519_key ]] \
        || ssh-keygen -q -t ed25519 -N "" -C "$node" -f "$dir/ssh_host_ed25519_key"
    cat >"$dir/sshd_config" <<EOF
ListenAddress $net.$k
Port 22
HostKey $dir/ssh_host_ed25519_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $state/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PrintMotd no
PrintLastLog no
# horovodrun and mpirun open a session per rank or daemon at once
MaxStartups 100:30:200
MaxSessions 100
# a session whose client vanished ends within 15 s
ClientAliveInterval 5
ClientAliveCountMax 3
EOF
}

# One process per node (sleep) holds its namespaces; sshd and slurmd enter them with nsenter.
start_holder() {
    local k=$1 dir=$state/node$1
    alive "$dir/holder.pid" && return 0
    rm -f "$dir/holder.pid" "$dir/sshd.pid" "$state/slurm/node$k/slurmd.pid"
    # shellcheck disable=SC2046  # daemons left from an earlier holder live in its namespaces
    kill_all $(ip netns pids "node$k")
    # shellcheck disable=SC2016  # the inner shell expands $1, $2, $3
    setsid nsenter --net="/run/netns/node$k" unshare --uts --mount --propagation private \
        sh -c 'hostname "node$1" &&
               mount --bind "/etc/netns/node$1/hosts" /etc/hosts &&
               for path in $(echo "$3" | tr ":" " "); do
                   case $path in /tmp/?*)
                       mkdir -p "$2/tmp/${path#/tmp/}" &&
                       mount --bind "$path" "$2/tmp/${path#/tmp/}" || exit 1 ;;
                   esac
               done &&
               mount --rbind "$2/tmp" /tmp &&
               mount -t tmpfs -o mode=1777 tmpfs /dev/shm &&
               echo $$ >"$2/holder.pid" && exec sleep infinity' sh "$k" "$dir" "$share" \
        </dev/null >"$dir/holder.log" 2>&1 &
    for _ in $(seq 50); do alive "$dir/holder.pid" && return 0; sleep 0.1; done
    local why
    why=$(tail -1 "$dir/holder.log")
    [[ $why =~ (not permitted|Permission denied) ]] && fail 2 "node$k's namespaces refused: $why"
    fail 1 "node$k's namespaces did not come up: $why"
}

start_sshd() {
    local k=$1 dir=$state/node$1
    alive "$dir/sshd.pid" && return 0
    [[ -d /run/sshd ]] || { mkdir -p /run/sshd && touch "$state/made-run-sshd"; }
    in_node "node$k" "$(command -v sshd)" -f "$dir/sshd_config" -E "$dir/sshd.log" \
        </dev/null >/dev/null 2>&1 || fail 1 "sshd did not start on node$k; see $dir/sshd.log"
}

write_ssh_config() {  # the marked block at the top of ~/.ssh/config, and the known hosts
    local k n=$1 home config names=() body
    home=$(ssh_home)
    config=$home/.ssh/config
    [[ -d $home/.ssh ]] || { mkdir -m 700 "$home/.ssh" && touch "$state/made-ssh-dir"; }
    if [[ ! -f $config ]]; then
        touch "$config" "$state/made-ssh-config"
        chmod 600 "$config"
    fi
    : >"$state/known_hosts"
    for k in $(seq "$n"); do
        names+=("node$k" "$net.$k")
        echo "node$k,$net.$k $(cut -d' ' -f1,2 "$state/node$k/ssh_host_ed25519_key.pub")" \
            >>"$state/known_hosts"
    done
    body=$(
        echo "$begin"
        for k in $(seq "$n"); do  # this machine does not resolve node names; the nodes do
            echo "Match originalhost node$k !exec \"getent hosts node$k >/dev/null\""
            echo "    HostName $net.$k"
        done
        echo "Host ${names[*]}"
        echo "    User root"
        echo "    IdentityFile $state/id_ed25519"
        echo "    IdentitiesOnly yes"
        echo "    BatchMode yes"
        echo "    StrictHostKeyChecking no"
        echo "    UserKnownHostsFile $state/known_hosts"
        echo "    ConnectTimeout 5"
        echo "    ServerAliveInterval 2"
        echo "    ServerAliveCountMax 3"
        echo "Host *"
        echo "$end"
    )
    remove_ssh_block
    { echo "$body"; cat "$config"; } >"$config.hvdl-new" && mv "$config.hvdl-new" "$config"
    chmod 600 "$config"
}

# --- start: Slurm ---------------------------------------------------------------------------

write_slurm_conf() {
    local k n=$1 node cpus memory
    node=$(slurmd -C)
    node=${node%%$'\n'*}
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node")
    memory=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
    [[ -n $cpus && -n $memory ]] || fail 1 "could not read CPUs and RealMemory from slurmd -C"
    mkdir -p "$state/slurm/ctld"
    for k in $(seq "$n"); do mkdir -p "$state/slurm/node$k"; done
    cat >"$SLURM_CONF.new" <<EOF
# written by hvdl launch/local-cluster.sh; removed by its stop
ClusterName=hvdl-nodes
SlurmctldHost=localhost($net.254)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
AuthType=auth/none
CredType=cred/none
MpiDefault=pmix
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdTimeout=10
# A task that dies ends its step: without this srun waits for the others, which wait forever
# for the dead rank in their next allreduce.
KillOnBadExit=1
KillWait=5
InactiveLimit=60
StateSaveLocation=$state/slurm/ctld
SlurmdSpoolDir=$state/slurm/%n
SlurmctldPidFile=$state/slurm/slurmctld.pid
SlurmdPidFile=$state/slurm/%n/slurmd.pid
SlurmctldLogFile=$state/slurm/slurmctld.log
SlurmdLogFile=$state/slurm/%n/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
$(for k in $(seq "$n"); do
    echo "NodeName=node$k NodeAddr=$net.$k CPUs=$cpus RealMemory=$((memory * 9 / 10 / n))"
done)
PartitionName=debug Nodes=node[1-$n] Default=YES MaxTime=INFINITE State=UP
EOF
    if [[ -f $SLURM_CONF ]] && cmp -s "$SLURM_CONF" "$SLURM_CONF.new"; then
        rm "$SLURM_CONF.new"
        return 0
    fi
    mv "$SLURM_CONF.new" "$SLURM_CONF"
    # The daemons read the configuration when they start.
    alive "$state/slurm/slurmctld.pid" && kill_all "$(cat "$state/slurm/slurmctld.pid")"
    for k in $(seq "$n"); do
        alive "$state/slurm/node$k/slurmd.pid" && kill_all "$(cat "$state/slurm/node$k/slurmd.pid")"
    done
    return 0
}

start_slurm() {
    local k n=$1 states=""
    write_slurm_conf "$n"
    grep -qw pmix <<<"$(srun --mpi=list 2>&1 || true)" || fail 1 "this Slurm has no pmix plugin"
    alive "$state/slurm/slurmctld.pid" || slurmctld -f "$SLURM_CONF" </dev/null >/dev/null 2>&1 \
        || fail 1 "slurmctld did not start; see $state/slurm/slurmctld.log"
    for k in $(seq "$n"); do
        alive "$state/slurm/node$k/slurmd.pid" \
            || in_node "node$k" slurmd -f "$SLURM_CONF" -N "node$k" </dev/null >/dev/null 2>&1 \
            || fail 1 "slurmd did not start on node$k; see $state/slurm/node$k/slurmd.log"
    done
    for _ in $(seq 60); do
        states=$(sinfo -h -N -o %T 2>/dev/null | sort -u | paste -sd, || true)
        [[ $states =~ ^(idle|mixed|allocated)(,(idle|mixed|allocated))*$ ]] && return 0
        if [[ $states =~ down|drain ]]; then  # refused while a node does not answer yet
            scontrol update NodeName="node[1-$n]" State=RESUME >/dev/null 2>&1 || true
        fi
        sleep 1
    done
    fail 1 "Slurm nodes are '${states:-unreachable}' after 60 s; see $state/slurm/"
}

check_ssh() {  # from this machine to node1, and from node1 to every node, by name
    local k n=$1 got
    got=$(ssh node1 hostname 2>&1) || fail 1 "ssh node1 from this machine failed: $got"
    for k in $(seq "$n"); do
        got=$(in_node node1 ssh "node$k" hostname 2>&1) \
            || fail 1 "ssh node$k from node1 failed: ${got##*$'\n'}"
        [[ $got == "node$k" ]] || fail 1 "ssh node$k from node1 reached '$got'"
    done
}

start() {
    local k n=$1
    [[ $n =~ ^[2-4]$ ]] || fail 2 "the number of nodes must be 2, 3 or 4, not '$n'"
    [[ $net =~ ^(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])){2}$ ]] \
        || fail 2 "HVDL_CLUSTER_NET must be three octets such as 10.213.0, not '$net'"
    [[ $port =~ ^[0-9]+$ ]] && ((port >= 1024 && port < 65535)) \
        || fail 2 "HVDL_CLUSTER_SLURM_PORT must be a port from 1024 to 65534, not '$port'"
    [[ $(id -u) == 0 ]] || fail 2 "network namespaces need root"
    install_missing
    if [[ -f $state/nodes && $(node_count) != "$n" ]]; then
        echo "local-cluster: $(node_count) nodes running; rebuilding with $n" >&2
        stop
    fi
    check_subnet
    mkdir -p "$state"
    chmod 700 "$state"
    echo "$n" >"$state/nodes"
    [[ -f $state/id_ed25519 ]] \
        || ssh-keygen -q -t ed25519 -N "" -C hvdl-cluster -f "$state/id_ed25519"
    cp "$state/id_ed25519.pub" "$state/authorized_keys"
    make_network
    for k in $(seq "$n"); do
        make_node "$k" "$n"
        start_holder "$k"
        start_sshd "$k"
    done
    write_ssh_config "$n"
    check_ssh "$n"
    local slurm="no Slurm (HVDL_CLUSTER_SLURM=0)"
    if [[ $with_slurm == 1 ]]; then
        start_slurm "$n"
        slurm="Slurm nodes node[1-$n] idle, SLURM_CONF=$SLURM_CONF"
    fi
    echo "local-cluster: up, node1..node$n at $net.1-$n (ssh as root), $slurm"
}

status() {
    local k n missing=()
    n=$(node_count)
    ((n > 0)) || { echo "local-cluster: not running"; exit 3; }
    for k in $(seq "$n"); do
        alive "$state/node$k/holder.pid" || missing+=("node$k")
        alive "$state/node$k/sshd.pid" || missing+=("node$k sshd")
        if [[ -f $SLURM_CONF ]]; then
            alive "$state/slurm/node$k/slurmd.pid" || missing+=("node$k slurmd")
        fi
    done
    [[ -f $SLURM_CONF ]] && ! alive "$state/slurm/slurmctld.pid" && missing+=(slurmctld)
    if ((${#missing[@]})); then
        echo "local-cluster: partly up, $n nodes; not running: ${missing[*]}"
        exit 1
    fi
    local slurm=""
    [[ -f $SLURM_CONF ]] && slurm=", Slurm: $(sinfo -h -N -o '%N %T' 2>/dev/null | paste -sd,)"
    echo "local-cluster: up, node1..node$n at $net.1-$n$slurm"
}

node_arg() {  # $1 must name a running node
    (($(node_count) > 0)) || fail 2 "the cluster is not running (start it: $0 start N)"
    [[ $1 =~ ^node[0-9]+$ ]] && alive "$state/$1/holder.pid" \
        || fail 2 "no running node '$1' (nodes: node1..node$(node_count))"
}

usage="start [N] | stop | status | exec NODE -- CMD... | link NODE up|down"
case ${1:-} in
    start) start "${2:-2}" ;;
    stop)
        [[ $(id -u) == 0 ]] || fail 2 "stopping the cluster needs root"
        stop
        echo "local-cluster: stopped" ;;
    status) status ;;
    exec)
        (($# >= 4)) && [[ $3 == -- ]] || fail 2 "usage: exec NODE -- COMMAND [ARGS...]"
        node_arg "$2"
        node=$2
        shift 3
        # exec: signals sent to this process reach the command itself
        exec nsenter -t "$(cat "$state/$node/holder.pid")" --net --uts --mount --wd="$PWD" \
            -- "$@" ;;
    link)
        node_arg "${2:-}"
        [[ ${3:-} =~ ^(up|down)$ ]] || fail 2 "usage: link NODE up|down"
        ip -n "$2" link set eth0 "$3"
        echo "local-cluster: $2 eth0 $3" ;;
    *) fail 2 "unknown command '${1:-}' (use: $usage)" ;;
esac
