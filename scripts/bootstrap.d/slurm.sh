# Components `slurm` and `slurm-stop` of scripts/bootstrap, which sources this file and
# provides say, die, install_missing and LOGDIR. A Slurm 22.05 cluster on this machine:
# one slurmctld and three slurmd (n1-n3, 4 fake GPUs each) for the SLURM backend's tests.
# shellcheck shell=bash

SLURM_DIR=/var/lib/pytest-madengine/slurm
SLURM_CONF=/etc/slurm/slurm.conf
SLURM_GRES_CONF=/etc/slurm/gres.conf
SLURM_RUN=/run/pytest-madengine-slurm
SLURM_PARTITION=mad
SLURM_NODES=(n1 n2 n3)
SLURM_GPUS=4
# Off Slurm's default ports (6817/6818), so that a real installation is not answered.
SLURM_CTLD_PORT=17000
SLURM_NODE_PORTS=17001-17003
# Finished jobs stay in `scontrol show job` this long (s): the only record without slurmdbd.
SLURM_MIN_JOB_AGE=600
SLURM_JOB_LABEL=org.pytest-madengine.slurm-job
SLURM_MARK="# written by pytest-madengine scripts/bootstrap (component slurm)"
SLURM_MUNGE_KEY=/etc/munge/munge.key

EXTRA_USAGE+="  slurm         a Slurm 22.05 cluster on this machine (Debian's slurmctld, slurmd,
                munge): partition $SLURM_PARTITION, nodes n1-n3 with $SLURM_GPUS fake GPUs each; an
                Epilog removes the job's containers (label $SLURM_JOB_LABEL);
                writes $SLURM_DIR/cluster.json
  slurm-stop    stops that cluster's daemons (slurmctld, slurmd, munged)
"

# ---- processes ----

# The pid in a pid file, if that process is still the named program.
slurm_live_pid() {  # pidfile name
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && echo "$pid"
}

slurm_munge_answers() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }
# Not `| grep -q`: under pipefail, grep leaving early can fail the pipeline (SIGPIPE).
slurm_ctld_answers() { [[ $(timeout 10 scontrol ping 2>/dev/null) == *"is UP"* ]]; }
slurm_node_pidfile() { echo "$SLURM_RUN/slurmd-$1.pid"; }

# Waits up to $2 seconds for a command to succeed; 1 when it never did.
slurm_wait() {  # command-string seconds
  local deadline=$((SECONDS + $2))
  until eval "$1"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

slurm_log_tail() {  # file
  echo "--- tail of $1:" >&2
  tail -n 15 "$1" >&2 2>/dev/null || true
}

# ---- files ----

# Writes stdin to a file only when the content differs (nothing is touched otherwise,
# not even the directory); 0 when it changed.
slurm_write_if_changed() {  # path [mode]
  local path=$1 mode=${2:-644} content
  content=$(cat)
  if [ -f "$path" ] && [ "$content" = "$(cat "$path")" ]; then
    return 1
  fi
  printf '%s\n' "$content" >"$path.new"
  chmod "$mode" "$path.new"
  mv "$path.new" "$path"
}

slurm_make_munge_key() {
  [ -s "$SLURM_MUNGE_KEY" ] && return 0
  mkdir -p "${SLURM_MUNGE_KEY%/*}"
  (umask 077 && dd if=/dev/urandom of="$SLURM_MUNGE_KEY" bs=1024 count=1 status=none)
  chown munge:munge "$SLURM_MUNGE_KEY"
  chmod 400 "$SLURM_MUNGE_KEY"
  say "slurm: made a munge key ($SLURM_MUNGE_KEY)"
}

# Fake GPUs: Slurm wants char devices (a plain file is rejected); 195 is NVIDIA's major.
slurm_make_gpu_devices() {
  local minor path
  mkdir -p "$SLURM_DIR/dev"
  for minor in $(seq 0 $((${#SLURM_NODES[@]} * SLURM_GPUS - 1))); do
    path=$SLURM_DIR/dev/nvidia$minor
    if [ ! -c "$path" ]; then
      rm -f "$path"
      mknod "$path" c 195 "$minor"
    fi
  done
}

slurm_conf_text() {
  cat <<CONF
$SLURM_MARK
ClusterName=pytest-madengine
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=$SLURM_CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool/%n
SlurmctldPidFile=$SLURM_RUN/slurmctld.pid
SlurmdPidFile=$SLURM_RUN/slurmd-%n.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd-%n.log
# No cgroup plugins: plain process tracking works in any container.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
SchedulerType=sched/backfill
# Start a batch job at once, not within up to 3 s (Slurm's default, for submission storms).
SchedulerParameters=batch_sched_delay=0
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGDIR/slurm-jobcomp.log
MinJobAge=$SLURM_MIN_JOB_AGE
# A node that comes back (slurmd restarted) returns to service by itself.
ReturnToService=2
# Short waits, so that cancelled and timed-out test jobs end within seconds.
KillWait=2
OverTimeLimit=0
Epilog=$SLURM_DIR/epilog.sh
PrologEpilogTimeout=60
# All nodes share this machine's CPUs: trust the counts below, not the hardware.
SlurmdParameters=config_overrides
NodeName=n[1-${#SLURM_NODES[@]}] NodeAddr=127.0.0.1 Port=[$SLURM_NODE_PORTS] CPUs=8 Gres=gpu:$SLURM_GPUS State=UNKNOWN
PartitionName=$SLURM_PARTITION Nodes=n[1-${#SLURM_NODES[@]}] Default=YES MaxTime=INFINITE State=UP
CONF
}

slurm_gres_text() {
  local i=0 n
  echo "$SLURM_MARK"
  echo "AutoDetect=off"
  for n in "${SLURM_NODES[@]}"; do
    echo "NodeName=$n Name=gpu File=$SLURM_DIR/dev/nvidia[$i-$((i + SLURM_GPUS - 1))]"
    i=$((i + SLURM_GPUS))
  done
}

# Runs as root on the job's node when the job ends, cancelled or not. scancel stops the
# job's processes, but a container is dockerd's child: it is removed here by its label.
slurm_epilog_text() {
  cat <<EPILOG
#!/bin/sh
$SLURM_MARK
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export DOCKER_HOST=unix:///var/run/docker.sock
[ -n "\$SLURM_JOB_ID" ] || exit 0
command -v docker >/dev/null 2>&1 || exit 0
ids=\$(timeout 20 docker ps -aq --filter "label=$SLURM_JOB_LABEL=\$SLURM_JOB_ID" 2>/dev/null)
if [ -n "\$ids" ]; then
  # shellcheck disable=SC2086 # one id a word
  timeout 30 docker rm -f \$ids >/dev/null 2>&1
  echo "\$(date -Is) job \$SLURM_JOB_ID: removed containers" \$ids >>$LOGDIR/slurm-epilog.log
fi
# A failing epilog drains the node.
exit 0
EPILOG
}

slurm_cluster_json() {
  local nodes
  nodes=$(printf '"%s", ' "${SLURM_NODES[@]}")
  cat <<JSON
{
  "partition": "$SLURM_PARTITION",
  "nodes": [${nodes%, }],
  "gpus_per_node": $SLURM_GPUS,
  "controller": "127.0.0.1:$SLURM_CTLD_PORT",
  "slurm_conf": "$SLURM_CONF",
  "min_job_age_s": $SLURM_MIN_JOB_AGE,
  "docker_job_label": "$SLURM_JOB_LABEL",
  "log_dir": "$LOGDIR"
}
JSON
}

# ---- daemons ----

slurm_start_munged() {
  mkdir -p /run/munge
  chown munge:munge /run/munge
  if slurm_munge_answers; then
    say "slurm: munged already answering"
    return 0
  fi
  # A dead munged's socket and pid file keep a new one from starting.
  if ! slurm_live_pid /run/munge/munged.pid munged >/dev/null; then
    rm -f /run/munge/munged.pid /run/munge/munge.socket.2
  fi
  setsid runuser -u munge -- munged >>"$LOGDIR/munged.out" 2>&1 </dev/null 9>&- || true
  slurm_wait slurm_munge_answers 15 || {
    slurm_log_tail /var/log/munge/munged.log
    slurm_log_tail "$LOGDIR/munged.out"
    die "slurm: munged does not answer (log /var/log/munge/munged.log)"
  }
  say "slurm: started munged"
}

slurm_start_ctld() {
  if slurm_ctld_answers; then
    say "slurm: slurmctld already answering"
    return 0
  fi
  if ! slurm_live_pid "$SLURM_RUN/slurmctld.pid" slurmctld >/dev/null; then
    # It daemonizes itself; setsid and the closed lock fd keep it off our session.
    setsid slurmctld >>"$LOGDIR/slurmctld.out" 2>&1 </dev/null 9>&- ||
      { slurm_log_tail "$LOGDIR/slurmctld.out"; die "slurm: slurmctld did not start"; }
  fi
  slurm_wait slurm_ctld_answers 30 || {
    slurm_log_tail "$LOGDIR/slurmctld.log"
    die "slurm: slurmctld does not answer on port $SLURM_CTLD_PORT (log $LOGDIR/slurmctld.log)"
  }
  say "slurm: started slurmctld on port $SLURM_CTLD_PORT"
}

slurm_start_node() {  # node
  local node=$1
  if slurm_live_pid "$(slurm_node_pidfile "$node")" slurmd >/dev/null; then
    return 1
  fi
  mkdir -p "$SLURM_DIR/spool/$node"
  setsid slurmd -N "$node" >>"$LOGDIR/slurmd-$node.out" 2>&1 </dev/null 9>&- ||
    { slurm_log_tail "$LOGDIR/slurmd-$node.log"; die "slurm: slurmd -N $node did not start"; }
}

# Stops slurmctld and every slurmd, waiting for them to exit (SIGKILL after 20 s).
slurm_stop_daemons() {
  local files=("$SLURM_RUN"/slurmctld.pid "$SLURM_RUN"/slurmd-*.pid) file name pid pids=()
  # `scontrol shutdown` saves state, and the controller tells every slurmd to exit too.
  if slurm_ctld_answers; then
    timeout 20 scontrol shutdown >/dev/null 2>&1 || true
  fi
  for file in "${files[@]}"; do
    name=slurmd
    [ "${file##*/}" = slurmctld.pid ] && name=slurmctld
    pid=$(slurm_live_pid "$file" "$name") || continue
    kill -TERM "$pid" 2>/dev/null || true
    pids+=("$pid")
  done
  for pid in "${pids[@]}"; do
    slurm_wait "[ ! -d /proc/$pid ]" 20 || kill -KILL "$pid" 2>/dev/null || true
  done
}

# ---- nodes ----

# Node states as "name state" lines, e.g. "n1 idle", "n2 down*", "n3 drained".
slurm_node_states() {
  timeout 10 sinfo -h -N -p "$SLURM_PARTITION" -o '%N %T' 2>/dev/null | sort -u
}

slurm_nodes_ready() {
  local states ready
  states=$(slurm_node_states) || return 1
  ready=$(awk '$2 ~ /^(idle|mixed|allocated|completing)$/' <<<"$states" | wc -l)
  [ "$ready" -eq ${#SLURM_NODES[@]} ]
}

# Drained or down nodes (a test or an earlier run left them so) go back to service.
slurm_resume_nodes() {
  local node state
  while read -r node state; do
    case $state in
      *'*') ;;  # not responding: its slurmd registers first (ReturnToService=2)
      down* | drain* | fail*)
        timeout 10 scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 &&
          say "slurm: node $node was $state; resumed"
        ;;
    esac
  done < <(slurm_node_states)
}

slurm_wait_for_nodes() {
  local deadline=$((SECONDS + 60)) next_resume=0
  until slurm_nodes_ready; do
    if [ $SECONDS -ge "$next_resume" ]; then
      slurm_resume_nodes
      next_resume=$((SECONDS + 3))
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "--- sinfo:" >&2
      timeout 10 sinfo -N -p "$SLURM_PARTITION" -o '%N %T %E' >&2 2>&1 || true
      slurm_log_tail "$LOGDIR/slurmctld.log"
      slurm_log_tail "$LOGDIR/slurmd-${SLURM_NODES[0]}.log"
      die "slurm: nodes ${SLURM_NODES[*]} not all idle after 60 s (logs $LOGDIR/slurm*.log)"
    fi
    sleep 0.3
  done
  if [ "$(timeout 10 sinfo -h -p "$SLURM_PARTITION" -o '%a')" != up ]; then
    timeout 10 scontrol update PartitionName="$SLURM_PARTITION" State=UP >/dev/null
    say "slurm: partition $SLURM_PARTITION was not up; set up"
  fi
}

# ---- components ----

component_slurm() {
  local start=$SECONDS changed=0 node started=()
  install_missing slurmctld=slurmctld slurmd=slurmd sbatch=slurm-client munged=munge
  mkdir -p "$LOGDIR" "$SLURM_DIR/state" "$SLURM_RUN" "${SLURM_CONF%/*}"
  if [ -e "$SLURM_CONF" ] && ! grep -qxF "$SLURM_MARK" "$SLURM_CONF"; then
    die "slurm: $SLURM_CONF was not written by this script; not replacing it"
  fi
  slurm_make_munge_key
  slurm_make_gpu_devices
  slurm_conf_text | slurm_write_if_changed "$SLURM_CONF" && changed=1
  slurm_gres_text | slurm_write_if_changed "$SLURM_GRES_CONF" && changed=1
  slurm_epilog_text | slurm_write_if_changed "$SLURM_DIR/epilog.sh" 755 || true
  if [ $changed -eq 1 ] && slurm_live_pid "$SLURM_RUN/slurmctld.pid" slurmctld >/dev/null; then
    say "slurm: configuration changed; restarting the daemons"
    slurm_stop_daemons
  fi
  slurm_start_munged
  slurm_start_ctld
  for node in "${SLURM_NODES[@]}"; do
    slurm_start_node "$node" && started+=("$node")
  done
  [ ${#started[@]} -eq 0 ] || say "slurm: started slurmd ${started[*]}"
  slurm_wait_for_nodes
  slurm_cluster_json | slurm_write_if_changed "$SLURM_DIR/cluster.json" || true
  say "slurm: partition $SLURM_PARTITION, nodes ${SLURM_NODES[*]} idle with $SLURM_GPUS GPUs" \
    "each, ready in $((SECONDS - start)) s; facts in $SLURM_DIR/cluster.json"
}

component_slurm_stop() {
  if ! command -v slurmctld >/dev/null 2>&1; then
    say "slurm-stop: Slurm is not installed; nothing to stop"
    return 0
  fi
  slurm_stop_daemons
  local pid
  if pid=$(slurm_live_pid /run/munge/munged.pid munged); then
    kill -TERM "$pid"
    slurm_wait "[ ! -d /proc/$pid ]" 10 || die "slurm-stop: munged (pid $pid) does not exit"
  fi
  say "slurm-stop: slurmctld, slurmd and munged stopped"
}
