#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for trying the batch scripts (and for the test).
#   cluster/slurm/local-cluster.sh start DIR [CPUS]   -> prints `export SLURM_CONF=DIR/slurm.conf`
#   cluster/slurm/local-cluster.sh stop DIR
# Needs root. Installs Debian's slurmctld, slurmd, slurm-client and munge when missing.
set -euo pipefail
cmd=${1:?start|stop}; dir=${2:?state directory}; cpus=${3:-4}
host=$(hostname -s)
stop() {
  for d in slurmd slurmctld; do
    if [ -f "$dir/$d.pid" ]; then kill "$(cat "$dir/$d.pid")" 2>/dev/null || true; fi
  done
  if [ -f "$dir/munged.started" ] && [ -f /run/munge/munged.pid ]; then
    kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
  fi
  rm -f "$dir/munged.started"
}
if [ "$cmd" = stop ]; then stop; exit 0; fi
[ "$cmd" = start ] || { echo "usage: $0 start|stop DIR [CPUS]" >&2; exit 2; }
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi
mkdir -p "$dir/state" "$dir/spool"
# munge: a key, its run directory, the daemon as the munge user
if [ ! -f /etc/munge/munge.key ]; then
  mungekey -c 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
fi
chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
mkdir -p /run/munge; chown munge:munge /run/munge
if ! pgrep -x munged >/dev/null; then
  runuser -u munge -- /usr/sbin/munged
  touch "$dir/munged.started"
fi
cat > "$dir/slurm.conf" <<CONF
ClusterName=hvams-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job waits out its credential's lifetime before it may start again (default 120 s)
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
NodeName=$host CPUs=$cpus State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$dir/slurm.conf
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 60); do
  state=$(sinfo -h -o %T 2>/dev/null | head -1 || true)
  case "$state" in idle*|mixed*) break ;; inval*|down*|drain*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;; esac
  sleep 1
done
sinfo -h -o %T | grep -q -E 'idle|mixed' || { echo "slurm node not idle: $(sinfo -h -o %T)" >&2; stop; exit 1; }
echo "export SLURM_CONF=$SLURM_CONF"
