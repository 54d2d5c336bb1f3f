#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for the cluster tests (tests/cluster/) and for
# trying the Slurm launcher before using a real cluster.  Run as root (CI is root).
#
#   scripts/local_slurm.sh start    # install slurm-wlm + munge if missing, configure, start; waits
#   scripts/local_slurm.sh status   # exit 0 once the node is idle (waits up to $SLURM_WAIT_S s)
#   scripts/local_slurm.sh stop     # stop slurmd, slurmctld and munged
#
# Idempotent: start on a running cluster only checks it.  What it sets up (Debian 12, Slurm 22.05):
#   munged run as the munge user with a generated key at munge's default location
#   (/etc/munge/munge.key, owner munge, mode 400); a minimal /etc/slurm/slurm.conf: SlurmUser=root,
#   auth/munge, proctrack/linuxproc, task/none, select/cons_tres with CR_Core_Memory, this host
#   (hostname -s) with its real CPUs and memory, one default partition "debug", accounting off.
# What it does not prove: GPUs, several nodes, cgroup limits, a real accounting database.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
KEY=/etc/munge/munge.key
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
LOGS=/var/log/slurm
WAIT_S=${SLURM_WAIT_S:-60}
NODE=$(hostname -s)

log() { echo "local_slurm: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
            && command -v sbatch >/dev/null; then
        return
    fi
    log "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

start_munge() {
    if [ ! -s "$KEY" ]; then
        log "generating $KEY"
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null; then mungekey --create --keyfile="$KEY" --force
        else dd if=/dev/urandom of="$KEY" bs=1 count=1024 status=none; fi
    fi
    chown munge:munge /etc/munge "$KEY"
    chmod 700 /etc/munge
    chmod 400 "$KEY"
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
    log "starting munged (as munge)"
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.1
    done
    die "munged does not answer (see /var/log/munge/munged.log)"
}

write_conf() {
    # the node line exactly as slurmd detects it (CPUs, sockets, cores, threads, RealMemory)
    local node_line mem cpus
    node_line=$(slurmd -C | head -1)
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node_line")
    # leave 5% to the OS so slurmd does not drain the node for "low RealMemory"
    node_line=$(sed "s/RealMemory=[0-9]*/RealMemory=$((mem * 95 / 100))/" <<<"$node_line")
    mkdir -p "$CONF_DIR" "$STATE" "$SPOOL" "$LOGS"
    local tmp
    tmp=$(mktemp)
    cat >"$tmp" <<EOF
# Written by scripts/local_slurm.sh: a single-node test cluster.
ClusterName=lhp-local
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job may start again after cred_expire seconds (default 120): short for tests
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobRequeue=1
KillWait=10
MinJobAge=300
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$node_line State=UNKNOWN
# without DefMemPerCPU a job that asks no memory takes the whole node (CR_Core_Memory)
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=$((mem * 95 / 100 / cpus))
EOF
    if ! cmp -s "$tmp" "$CONF"; then
        mv "$tmp" "$CONF"
        chmod 644 "$CONF"
        return 0
    fi
    rm -f "$tmp"
    return 1
}

running() { pgrep -x "$1" >/dev/null; }

wait_idle() {
    local state=""
    for _ in $(seq $((WAIT_S * 2))); do
        state=$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -1 || true)
        case "$state" in
            idle|mixed|allocated) echo "local_slurm: node $NODE $state"; return 0 ;;
            drain*|down*)
                scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    die "node $NODE not idle after ${WAIT_S}s (state '${state:-no answer}'); see $LOGS/"
}

start() {
    need_root
    install_packages
    start_munge
    local changed=0
    write_conf && changed=1
    if [ "$changed" = 1 ] && { running slurmctld || running slurmd; }; then
        log "slurm.conf changed: restarting the daemons"
        stop_daemons
    fi
    running slurmctld || { log "starting slurmctld"; slurmctld; }
    running slurmd || { log "starting slurmd"; slurmd; }
    wait_idle
}

stop_daemons() {
    local d pid
    for d in slurmd slurmctld; do
        if [ -f "/run/$d.pid" ] && pid=$(cat "/run/$d.pid") && kill -0 "$pid" 2>/dev/null; then
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
    done
}

stop() {
    need_root
    stop_daemons
    local pid
    if pid=$(cat /run/munge/munged.pid 2>/dev/null) && kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    log "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) wait_idle ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
