#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, from Debian's slurm-wlm and munge packages, for
# the tests in tests/test_slurm.py (see docs/slurm.md).
#
#   bash scripts/slurm_local.sh start    # install if needed, configure, start, wait for idle
#   bash scripts/slurm_local.sh status   # daemons, node state, queue (exit 0 when up)
#   bash scripts/slurm_local.sh stop     # cancel this cluster's jobs, stop its daemons
#
# Everything lives in a state dir (default /tmp/absa-slurm, override with ABSA_SLURM_DIR):
# slurm.conf, a private munge key and socket, the daemons' state, spool, logs and pid files.
# Nothing under /etc is changed and no system service is used (works without systemd);
# `stop` ends only the daemons this script started, by the pids it recorded. `start` prints
# the line to use last on stdout:  export SLURM_CONF=<dir>/slurm.conf
#
# Environment: ABSA_SLURM_DIR (state dir), ABSA_SLURM_PORT (slurmctld port, default 6817;
# slurmd uses the next one), ABSA_SLURM_WAIT_S (how long start waits for an idle node,
# default 60), ABSA_SLURM_NO_INSTALL=1 (never call apt-get).
set -uo pipefail

DIR=${ABSA_SLURM_DIR:-/tmp/absa-slurm}
PORT=${ABSA_SLURM_PORT:-6817}
WAIT_S=${ABSA_SLURM_WAIT_S:-60}
CONF=$DIR/slurm.conf
MUNGE_DIR=$DIR/munge
SOCKET=$MUNGE_DIR/munge.socket
PIDS=$DIR/pids
LOGS=$DIR/log
DAEMONS=(munged slurmctld slurmd)

STARTED=() # daemons started by this call: a failed start stops them again

say() { echo "slurm_local: $*" >&2; }
die() {
    say "$*"
    local i
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do stop_pid "${STARTED[i]}"; done
    exit 1
}

# --- pids ------------------------------------------------------------------------------------

# pid of our daemon $1 if it is alive and still that program, else nothing
alive_pid() {
    local name=$1 pid
    pid=$(cat "$PIDS/$name.pid" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/comm ]] || return 1
    # a zombie has exited (PID 1 of a container may never reap it)
    [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]] || return 1
    echo "$pid"
}

# the daemon wrote its own pid file; keep a copy of the pid it holds as ours
record_pid() {
    local name=$1 file=$2 i pid
    for ((i = 0; i < 100; i++)); do
        pid=$(cat "$file" 2>/dev/null)
        if [[ $pid =~ ^[0-9]+$ ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]; then
            echo "$pid" >"$PIDS/$name.pid"
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# --- install and configure -------------------------------------------------------------------

have_binaries() {
    local b
    for b in munged mungekey munge unmunge slurmctld slurmd sinfo srun sbatch squeue scontrol scancel; do
        command -v "$b" >/dev/null 2>&1 || return 1
    done
}

install_packages() {
    have_binaries && return 0
    [[ ${ABSA_SLURM_NO_INSTALL:-0} == 1 ]] && die "slurm/munge binaries missing and ABSA_SLURM_NO_INSTALL=1"
    command -v apt-get >/dev/null 2>&1 || die "slurm/munge binaries missing and no apt-get to install them"
    [[ $(id -u) == 0 ]] || die "slurm/munge binaries missing; installing them needs root (apt-get install slurm-wlm munge)"
    say "installing slurm-wlm and munge with apt-get (log: $DIR/apt.log)"
    mkdir -p "$DIR"
    if ! {
        DEBIAN_FRONTEND=noninteractive apt-get update -q &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge
    } </dev/null >"$DIR/apt.log" 2>&1; then
        tail -n 5 "$DIR/apt.log" >&2
        die "apt-get install slurm-wlm munge failed (see $DIR/apt.log)"
    fi
    have_binaries || die "slurm-wlm installed but some binaries are still missing"
}

node_line() {
    # slurmd -C prints the node's hardware as a slurm.conf NodeName line
    local host=$1 line
    line=$(slurmd -C 2>/dev/null | head -n 1)
    if [[ $line == NodeName=* ]]; then
        echo "$line" | sed -E "s/^NodeName=[^ ]+/NodeName=$host/; s/ UpTime=.*//"
    else
        local mem
        mem=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
        echo "NodeName=$host CPUs=$(nproc) RealMemory=$mem"
    fi
}

write_config() {
    local host=$1
    mkdir -p "$DIR" "$PIDS" "$LOGS" "$DIR/state" "$DIR/spool"
    chmod 0755 "$DIR"
    cat >"$CONF.tmp" <<EOF
# one-node cluster of scripts/slurm_local.sh (generated; rewritten by a start with no daemon up)
ClusterName=absa-local
SlurmctldHost=$host
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd-%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
# short waits: a test cluster (SIGTERM -> SIGKILL after 5 s; finished jobs listed 5 min)
KillWait=5
MinJobAge=300
InactiveLimit=0
SlurmdTimeout=60
$(node_line "$host") State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    mv "$CONF.tmp" "$CONF"
}

# --- daemons ---------------------------------------------------------------------------------

start_munged() {
    if pid=$(alive_pid munged); then
        say "munged already running (pid $pid)"
        return 0
    fi
    mkdir -p "$MUNGE_DIR"
    chmod 0700 "$MUNGE_DIR"
    if [[ ! -s $MUNGE_DIR/munge.key ]]; then
        mungekey --create --keyfile="$MUNGE_DIR/munge.key" 2>/dev/null ||
            dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none ||
            die "cannot create $MUNGE_DIR/munge.key"
    fi
    chown root:root "$MUNGE_DIR/munge.key" 2>/dev/null || true
    chmod 0400 "$MUNGE_DIR/munge.key"
    rm -f "$SOCKET" "$SOCKET.lock"
    # --force: munged refuses to run as root otherwise
    munged --force --socket="$SOCKET" --key-file="$MUNGE_DIR/munge.key" \
        --pid-file="$MUNGE_DIR/munged.pid" --log-file="$LOGS/munged.log" \
        --seed-file="$MUNGE_DIR/munged.seed" </dev/null >>"$LOGS/munged.out" 2>&1 ||
        die "munged did not start: $(tail -n 3 "$LOGS/munged.out" "$LOGS/munged.log" 2>/dev/null | tr '\n' ' ')"
    record_pid munged "$MUNGE_DIR/munged.pid" || die "munged did not write its pid file"
    STARTED+=(munged)
    munge -n -S "$SOCKET" </dev/null | unmunge -S "$SOCKET" >/dev/null 2>&1 ||
        die "munge credentials do not round-trip through $SOCKET (see $LOGS/munged.log)"
    say "munged started (pid $(cat "$PIDS/munged.pid"))"
}

start_slurm_daemon() {
    local name=$1 pid
    if pid=$(alive_pid "$name"); then
        say "$name already running (pid $pid)"
        return 0
    fi
    rm -f "$DIR/$name.pid"
    local args=(-f "$CONF")
    # a fresh controller: no jobs or node states left from an earlier cluster in this dir
    [[ $name == slurmctld ]] && args+=(-c -i)
    SLURM_CONF=$CONF "$name" "${args[@]}" </dev/null >>"$LOGS/$name.out" 2>&1 ||
        die "$name did not start: $(tail -n 5 "$LOGS/$name.out" "$LOGS/$name.log" 2>/dev/null | tr '\n' ' ')"
    record_pid "$name" "$DIR/$name.pid" ||
        die "$name exited at once: $(tail -n 5 "$LOGS/$name.log" 2>/dev/null | tr '\n' ' ')"
    STARTED+=("$name")
    say "$name started (pid $(cat "$PIDS/$name.pid"))"
}

node_state() {
    SLURM_CONF=$CONF timeout 10 sinfo -h -N -n "$1" -o %T 2>/dev/null | head -n 1
}

wait_idle() {
    local host=$1 t0=$SECONDS st="" resumed=0
    while ((SECONDS - t0 < WAIT_S)); do
        st=$(node_state "$host")
        case $st in
        idle | mixed | allocated) return 0 ;;
        down* | drain* | fail*)
            if ((resumed == 0)); then # a node left down by an earlier cluster's state
                SLURM_CONF=$CONF scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1
                resumed=1
            fi
            ;;
        esac
        for d in "${DAEMONS[@]}"; do
            alive_pid "$d" >/dev/null ||
                die "$d died while waiting for the node: $(tail -n 5 "$LOGS/$d.log" 2>/dev/null | tr '\n' ' ')"
        done
        sleep 1
    done
    die "node $host not idle after ${WAIT_S}s (state: ${st:-no answer}); logs in $LOGS"
}

any_alive() {
    local d
    for d in "${DAEMONS[@]}"; do alive_pid "$d" >/dev/null && return 0; done
    return 1
}

all_alive() {
    local d
    for d in "${DAEMONS[@]}"; do alive_pid "$d" >/dev/null || return 1; done
}

# --- commands --------------------------------------------------------------------------------

cmd_start() {
    local host
    host=$(hostname -s) || die "hostname -s failed"
    if all_alive; then
        say "already running (state dir $DIR)"
        wait_idle "$host"
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    install_packages
    any_alive || write_config "$host" # never rewrite the config under live daemons
    start_munged
    start_slurm_daemon slurmctld
    start_slurm_daemon slurmd
    wait_idle "$host"
    say "node $host is $(node_state "$host"): $(SLURM_CONF=$CONF sinfo --version 2>/dev/null), state dir $DIR"
    echo "export SLURM_CONF=$CONF"
}

stop_pid() {
    local name=$1 pid i
    if ! pid=$(alive_pid "$name"); then
        rm -f "$PIDS/$name.pid"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do
        alive_pid "$name" >/dev/null || break
        sleep 0.1
    done
    if alive_pid "$name" >/dev/null; then
        kill -KILL "$pid" 2>/dev/null
        sleep 0.2
    fi
    rm -f "$PIDS/$name.pid"
    say "stopped $name (pid $pid)"
}

cmd_stop() {
    if ! any_alive; then
        say "not running (state dir $DIR)"
        return 0
    fi
    if alive_pid slurmctld >/dev/null; then # the jobs of this cluster only
        local jobs i
        jobs=$(SLURM_CONF=$CONF timeout 10 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
        if [[ -n ${jobs// /} ]]; then
            say "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            SLURM_CONF=$CONF timeout 10 scancel $jobs >/dev/null 2>&1
            for ((i = 0; i < 30; i++)); do
                [[ -z $(SLURM_CONF=$CONF timeout 10 squeue -h -t running,completing -o %A 2>/dev/null) ]] && break
                sleep 1
            done
        fi
    fi
    stop_pid slurmd
    stop_pid slurmctld
    stop_pid munged
}

cmd_status() {
    local d pid rc=0
    for d in "${DAEMONS[@]}"; do
        if pid=$(alive_pid "$d"); then
            echo "$d: running (pid $pid)"
        else
            echo "$d: not running"
            rc=3
        fi
    done
    echo "state dir: $DIR"
    if ((rc == 0)); then
        echo "export SLURM_CONF=$CONF"
        SLURM_CONF=$CONF sinfo --version
        SLURM_CONF=$CONF timeout 10 sinfo -N -o "%N %T %c %m %P" || rc=1
        SLURM_CONF=$CONF timeout 10 squeue -o "%.12i %.10P %.20j %.10T %.8M %R" || rc=1
    fi
    return "$rc"
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*)
    echo "usage: $0 start|stop|status   (state dir: \${ABSA_SLURM_DIR:-/tmp/absa-slurm})" >&2
    exit 2
    ;;
esac
