#!/usr/bin/env bash
# A single-node Slurm on this machine, for the Slurm launcher's tests (run as root).
#
#   bash scripts/slurm_local.sh start    # install if needed, configure, start; waits until the node is idle
#   bash scripts/slurm_local.sh status
#   bash scripts/slurm_local.sh stop     # stops what start started
#
# Debian's slurm-wlm (apt-get install slurm-wlm), a munge key, munged as the munge user, and a
# slurm.conf for one node with this machine's CPUs (process tracking by /proc, no cgroups, no
# accounting). Two settings keep the tests short: cores shared by up to 4 jobs
# (OverSubscribe=FORCE:4; the test jobs are small) and a requeued job starting again after
# 10 s instead of Slurm's 120 (cred_expire). Idempotent: start again does nothing when the node
# already answers.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
HOST=$(hostname -s)
CPUS=$(nproc)
MEMORY_MB=$(awk '/^MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)  # what slurmd finds, less a margin
STARTED=/run/dbm-ltr-slurm.started

node_state() { sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1; }

# start daemon $1 (the command after it) unless it runs already; note it in $STARTED for stop
launch() {
    local name=$1
    shift
    pgrep -x "$name" >/dev/null && return 0
    "$@"
    echo "$name" >>"$STARTED"
}

start() {
    if [ "$(node_state)" = idle ] || [ "$(node_state)" = mixed ] || [ "$(node_state)" = allocated ]; then
        echo "slurm: already up ($(node_state))"
        return 0
    fi
    if ! command -v slurmctld >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm >/dev/null
    fi
    mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge /var/spool/slurmctld /var/spool/slurmd \
        /var/log/slurm /etc/slurm
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
    chmod 400 /etc/munge/munge.key
    chmod 700 /etc/munge
    launch munged runuser -u munge -- /usr/sbin/munged
    rm -f /etc/slurm/cgroup.conf  # a cgroup.conf (even CgroupPlugin=disabled) stops slurmd here
    cat >"$CONF" <<EOF
ClusterName=local
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
SchedulerParameters=sched_interval=1
MinJobAge=600
KillWait=10
NodeName=$HOST CPUs=$CPUS RealMemory=$MEMORY_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
    launch slurmctld /usr/sbin/slurmctld
    launch slurmd /usr/sbin/slurmd
    for _ in $(seq 60); do
        case "$(node_state)" in
            idle | mixed | allocated) echo "slurm: up, node $HOST $(node_state)"; return 0 ;;
            down* | drain*) scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
        esac
        sleep 1
    done
    echo "slurm: the node did not become idle; see /var/log/slurm/" >&2
    return 1
}

stop() {  # only the daemons start launched (in reverse order), not ones that ran before
    if [ -e "$STARTED" ]; then
        for name in $(tac "$STARTED"); do
            pkill -x "$name" || true
        done
        rm -f "$STARTED"
        echo "slurm: stopped"
    fi
}

case "${1:-status}" in
    start) start ;;
    stop) stop ;;
    status) sinfo 2>/dev/null || echo "slurm: not running" ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
