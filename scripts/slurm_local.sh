#!/usr/bin/env bash
# A real one-node Slurm (Debian 12's 22.05 packages) for tests of the Slurm executor, without
# systemd: munged, slurmctld and slurmd run as plain background processes, everything (config,
# key, state, spool, logs, PIDs) under one directory. See scripts/slurm_notes.md.
#
#   scripts/slurm_local.sh install          # root: apt-get the packages, no service started
#   eval "$(scripts/slurm_local.sh start)"  # start (idempotent) and export SLURM_CONF
#   scripts/slurm_local.sh status|env|stop [DIR]
#
# DIR defaults to ${TMPDIR:-/tmp}/whisper-moe-slurm. Ports: SLURM_LOCAL_CTLD_PORT (6817) and
# SLURM_LOCAL_SLURMD_PORT (6818). Messages go to stderr; stdout carries only the export lines.
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge)
DAEMONS=(munged slurmctld slurmd) # start order; stop: slurmd and slurmctld, then munged
CTLD_PORT=${SLURM_LOCAL_CTLD_PORT:-6817}
SLURMD_PORT=${SLURM_LOCAL_SLURMD_PORT:-6818}
MIN_JOB_AGE=${SLURM_LOCAL_MIN_JOB_AGE:-300} # seconds a finished job stays in squeue/scontrol

say() { printf 'slurm_local: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
usage() {
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

set_dir() {
  local d=${1:-${TMPDIR:-/tmp}/whisper-moe-slurm}
  [[ $d != *[[:space:]]* ]] || die "the directory must not contain whitespace: '$d'"
  DIR=$(realpath -m -- "$d")
  CONF=$DIR/slurm.conf
  SOCK=$DIR/munge/munge.socket.2
  NODE=$(hostname -s)
}

# --- processes ---------------------------------------------------------------------------

# Alive: /proc/PID exists, is not a zombie, and its command line names our directory (so a
# recycled PID of some other process is never taken, nor killed, as ours).
alive() {
  local pid=$1 state
  [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/status ]] || return 1
  state=$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || return 1
  [[ $state != Z && $state != X ]] || return 1
  tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$DIR/" || return 1
}
zombie() { awk '/^State:/ {exit !($2 == "Z")}' "/proc/$1/status" 2>/dev/null; }
pid_of() { cat "$DIR/pids/$1" 2>/dev/null || true; }
running() { local p; p=$(pid_of "$1"); [[ -n $p ]] && alive "$p"; }

# Start a daemon in the foreground mode of its own, detached from our session and our stdout
# (so that `eval "$(... start)"` does not wait for it), and record its PID.
launch() {
  local name=$1; shift
  local log=$DIR/log/$name.out
  SLURM_CONF=$CONF setsid "$@" </dev/null >>"$log" 2>&1 &
  local pid=$!
  echo "$pid" >"$DIR/pids/$name"
  sleep 0.05
  if ! alive "$pid"; then
    zombie "$pid" && wait "$pid" 2>/dev/null || true
    say "$name exited at once; the end of $log and of its log file:"
    tail -n 20 "$log" "$DIR/log/$name.log" 2>/dev/null | sed 's/^/    /' >&2 || true
    return 1
  fi
}

# TERM the named daemons together, wait up to 10 s, then KILL. A zombie counts as gone: it has
# exited and only its parent has not reaped it yet (PID 1 once this script has returned; we can
# only reap our own children, i.e. daemons of a start failing half-way).
terminate() {
  local name pid i pids=() names=()
  for name in "$@"; do
    pid=$(pid_of "$name")
    if [[ -n $pid ]] && alive "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
      names+=("$name")
    fi
    rm -f "$DIR/pids/$name"
  done
  ((${#pids[@]} > 0)) || return 0
  any_alive() { local p; for p in "${pids[@]}"; do alive "$p" && return 0; done; return 1; }
  for ((i = 0; i < 100; i++)); do any_alive || break; sleep 0.1; done
  for i in "${!pids[@]}"; do
    if alive "${pids[i]}"; then
      say "${names[i]} (PID ${pids[i]}) ignored SIGTERM for 10 s: SIGKILL"
      kill -KILL "${pids[i]}" 2>/dev/null || true
    fi
  done
  for ((i = 0; i < 50; i++)); do any_alive || break; sleep 0.1; done
  for i in "${!pids[@]}"; do
    wait "${pids[i]}" 2>/dev/null || true
    alive "${pids[i]}" && die "${names[i]} (PID ${pids[i]}) is still running"
    say "stopped ${names[i]} (PID ${pids[i]})"
    ZOMBIES+=("${pids[i]}")
  done
}

# Job processes left behind once the daemons are gone (slurmd or slurmctld had died): slurmstepd
# inherits SLURM_CONF=<our conf> from the slurmd we started, job processes from the submitting
# shell together with SLURM_JOB_ID. slurmstepd ignores SIGTERM: they get SIGKILL.
environ_of() { tr '\0' '\n' 2>/dev/null <"/proc/$1/environ" || true; }
leftover_job_pids() {
  local d pid env
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    [[ $pid != "$$" && $pid != "$BASHPID" ]] || continue
    env=$(environ_of "$pid")
    grep -qxF "SLURM_CONF=$CONF" <<<"$env" || continue
    if { [[ $(cat "/proc/$pid/comm" 2>/dev/null) == slurmstepd ]] || grep -qE '^SLURM_JOB_ID=' <<<"$env"; } &&
      ! zombie "$pid"; then
      echo "$pid"
    fi
  done
}

# --- subcommands -------------------------------------------------------------------------

cmd_install() {
  [[ $(id -u) == 0 ]] || die "install must run as root (it calls apt-get)"
  command -v apt-get >/dev/null || die "apt-get not found: this script targets Debian 12"
  local n_ok
  n_ok=$(dpkg-query -W -f '${db:Status-Status}\n' "${PACKAGES[@]}" 2>/dev/null | grep -cx installed) || true
  if [[ $n_ok == "${#PACKAGES[@]}" ]]; then
    say "already installed: $(dpkg-query -W -f '${Package} ${Version}; ' "${PACKAGES[@]}")"
    return 0
  fi
  local policy=/usr/sbin/policy-rc.d backup=""
  # Package scripts would start munge/slurmctld/slurmd as system services: a policy-rc.d that
  # exits 101 forbids it. Keep one that already does so; otherwise put ours in place and
  # restore the previous state on exit.
  if [[ -e $policy ]] && grep -qx 'exit 101' "$policy"; then
    say "keeping the existing $policy (it exits 101)"
  else
    if [[ -e $policy ]]; then
      backup=$policy.whisper-moe-backup
      mv -f "$policy" "$backup"
    fi
    # shellcheck disable=SC2064
    trap "rm -f '$policy'; [[ -z '$backup' ]] || mv -f '$backup' '$policy'" EXIT
    trap 'exit 130' INT TERM HUP
    printf '#!/bin/sh\n# temporary, from whisper-moe scripts/slurm_local.sh install\nexit 101\n' >"$policy"
    chmod 755 "$policy"
  fi
  local apt=(apt-get -o DPkg::Lock::Timeout=600)
  say "apt-get update"
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" update -q >&2 || die "apt-get update failed"
  say "apt-get install ${PACKAGES[*]}"
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -q --no-install-recommends "${PACKAGES[@]}" >&2 ||
    die "apt-get install ${PACKAGES[*]} failed"
  local b
  for b in munged mungekey slurmctld slurmd sbatch squeue scontrol sinfo; do
    command -v "$b" >/dev/null || die "$b is missing after the install"
  done
  say "installed: $(dpkg-query -W -f '${Package} ${Version}; ' "${PACKAGES[@]}")"
}

check_installed() {
  local b missing=()
  for b in munged slurmctld slurmd sbatch squeue scontrol sinfo; do
    command -v "$b" >/dev/null || missing+=("$b")
  done
  ((${#missing[@]} == 0)) || die "not installed: ${missing[*]} (run: $0 install, as root)"
  [[ $(id -u) == 0 ]] || die "start must run as root (SlurmUser=root, munged as root)"
}

# A TCP socket listening on port $1 (state 0A in /proc/net/tcp*; no iproute2 needed).
port_busy() {
  local hex
  hex=$(printf '%04X' "$1")
  awk -v p=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == p {f = 1} END {exit !f}' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

real_memory() {
  local m
  m=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1)
  if [[ -z $m ]]; then m=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo); fi
  echo "$m"
}

write_conf() {
  local cpus mem
  cpus=$(nproc)
  mem=$(real_memory)
  [[ $mem =~ ^[0-9]+$ ]] && ((mem > 0)) || die "cannot read the memory size (slurmd -C: '$mem')"
  cat >"$CONF.tmp" <<EOF
# Written by whisper-moe scripts/slurm_local.sh; regenerated on each start.
ClusterName=whispermoe
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# Without DefMemPerCPU a job lacking --mem takes the whole node's memory: one job at a time.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem / cpus))
# Memory limits without cgroups: the step is killed when its RSS (sampled each second) exceeds --mem.
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# batch_sched_delay (default 3 s) lets sbatch jobs wait up to 3 s for the scheduler: not here.
SchedulerParameters=batch_sched_delay=0
MinJobAge=$MIN_JOB_AGE
KillWait=5
InactiveLimit=0
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
MpiDefault=none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  mv -f "$CONF.tmp" "$CONF"
}

node_state() { sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n1; }

wait_node_ready() {
  local i st resumed=0
  for ((i = 0; i < 300; i++)); do
    st=$(node_state)
    case $st in
    idle | mixed | allocated | completing) return 0 ;;
    drain* | drained | draining | inval | down | fail*)
      if ((resumed == 0)); then
        say "node $NODE is $st (left by an earlier run): resuming it"
        scontrol update NodeName="$NODE" State=RESUME >&2 || true
        resumed=1
      fi
      ;;
    esac
    running slurmd || { say "slurmd exited; its log:"; tail -n 20 "$DIR/log/slurmd.log" "$DIR/log/slurmd.out" >&2 2>/dev/null; return 1; }
    sleep 0.1
  done
  say "node $NODE not idle after 30 s (state '${st:-none}'); sinfo and the slurmd log:"
  sinfo -N >&2 || true
  tail -n 20 "$DIR/log/slurmd.log" >&2 2>/dev/null || true
  return 1
}

print_env() {
  echo "export SLURM_CONF=$CONF"
  echo "export SLURM_LOCAL_DIR=$DIR"
}

cmd_start() {
  check_installed
  local n all=1 any=0
  for n in "${DAEMONS[@]}"; do
    if running "$n"; then any=1; else all=0; fi
  done
  if ((all)); then
    export SLURM_CONF=$CONF
    wait_node_ready || die "the running cluster in $DIR is not usable; try: $0 stop $DIR"
    say "already running in $DIR"
    print_env
    return 0
  fi
  if ((any)); then
    say "partly running in $DIR: stopping what is left, then starting afresh"
    cmd_stop quiet
  fi
  local t0=$EPOCHREALTIME
  for n in "$CTLD_PORT" "$SLURMD_PORT"; do
    port_busy "$n" && die "TCP port $n is in use (another Slurm?); set SLURM_LOCAL_CTLD_PORT/SLURM_LOCAL_SLURMD_PORT"
  done
  mkdir -p "$DIR"/{state,spool,log,run,pids,munge}
  chmod 0755 "$DIR" "$DIR/munge" # munged refuses a socket dir writable by others
  local key=$DIR/munge/munge.key
  if [[ ! -s $key ]]; then
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile="$key" --bits=1024 >&2 || die "mungekey failed"
    else
      head -c 1024 /dev/urandom >"$key"
    fi
  fi
  chmod 0600 "$key"
  rm -f "$SOCK" "$SOCK.lock"
  write_conf
  export SLURM_CONF=$CONF

  launch munged munged -F --key-file="$key" --socket="$SOCK" --pid-file="$DIR/run/munged.pid" \
    --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" || fail_start
  local i
  for ((i = 0; i < 100; i++)); do
    [[ -S $SOCK ]] && munge -n -S "$SOCK" 2>/dev/null | unmunge -S "$SOCK" >/dev/null 2>&1 && break
    sleep 0.05
  done
  ((i < 100)) || { say "munged does not answer on $SOCK"; fail_start; }

  launch slurmctld slurmctld -D -f "$CONF" || fail_start
  for ((i = 0; i < 200; i++)); do
    scontrol ping 2>/dev/null | grep -q 'is UP' && break
    running slurmctld || break
    sleep 0.05
  done
  if ! scontrol ping 2>/dev/null | grep -q 'is UP'; then
    say "slurmctld did not come up; its log:"
    tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmctld.out" >&2 2>/dev/null || true
    fail_start
  fi

  launch slurmd slurmd -D -f "$CONF" -N "$NODE" || fail_start
  wait_node_ready || fail_start
  say "started in $DIR in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.2f", b - a}') s" \
    "(munged $(pid_of munged), slurmctld $(pid_of slurmctld), slurmd $(pid_of slurmd)); node $NODE $(node_state)"
  print_env
}

fail_start() {
  say "start failed; stopping what was started (logs stay in $DIR/log)"
  cmd_stop quiet || true
  exit 1
}

cmd_stop() {
  local quiet=${1:-}
  if [[ ! -d $DIR/pids ]] || [[ -z $(ls -A "$DIR/pids") ]]; then
    [[ -n $quiet ]] || say "nothing to stop in $DIR"
    return 0
  fi
  export SLURM_CONF=$CONF
  if running slurmctld && running slurmd; then
    local jobs i
    jobs=$(squeue -h -t all -o '%A %T' 2>/dev/null | awk '$2 != "COMPLETED" && $2 != "FAILED" && $2 != "CANCELLED" && $2 != "TIMEOUT" && $2 != "OUT_OF_MEMORY" && $2 != "NODE_FAIL" && $2 != "PREEMPTED" && $2 != "BOOT_FAIL" && $2 != "DEADLINE" {print $1}' | sort -u) || true
    if [[ -n $jobs ]]; then
      say "cancelling unfinished jobs: $(echo $jobs)"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for ((i = 0; i < 150; i++)); do
        squeue -h -t running,completing,pending,suspended -o '%A' 2>/dev/null | grep -q . || break
        sleep 0.1
      done
    fi
  fi
  ZOMBIES=()
  terminate slurmd slurmctld
  terminate munged
  local z i
  for ((i = 0; i < 30; i++)); do # PID 1 reaps orphans here within about 2 s
    z=$(for p in "${ZOMBIES[@]}"; do zombie "$p" && echo "$p"; done) || true
    [[ -n $z ]] || break
    sleep 0.1
  done
  [[ -z $z ]] || say "exited but not yet reaped by their parent (zombies, harmless): $(echo $z)"
  local left
  left=$(leftover_job_pids)
  if [[ -n $left ]]; then
    say "killing job processes left behind: $(echo $left)"
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
  fi
  [[ -n $quiet ]] || say "stopped (state and logs kept in $DIR)"
}

cmd_status() {
  local n p rc=0 up=0
  for n in "${DAEMONS[@]}"; do
    p=$(pid_of "$n")
    if [[ -n $p ]] && alive "$p"; then
      echo "$n: running (PID $p)"
      up=$((up + 1))
    elif [[ -n $p ]] && zombie "$p"; then
      echo "$n: exited (PID $p is a zombie)"
    else
      echo "$n: stopped"
    fi
  done
  if ((up == ${#DAEMONS[@]})); then
    SLURM_CONF=$CONF sinfo -N -o '%N %T %c %m' || rc=1
  elif ((up == 0)); then
    rc=3
  else
    rc=1
  fi
  echo "dir: $DIR"
  return $rc
}

cmd_env() {
  [[ -f $CONF ]] || die "no $CONF (run: $0 start $DIR)"
  print_env
}

main() {
  local sub=${1:-}
  (($# > 0)) && shift
  (($# <= 1)) || usage
  set_dir "${1:-}"
  case $sub in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) usage ;;
  esac
}

main "$@"
