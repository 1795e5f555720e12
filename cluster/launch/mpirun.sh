#!/usr/bin/env bash
# Launch hvams with mpirun over several machines.
#   cluster/launch/mpirun.sh HOSTFILE NP SERVERS -- [hvams train flags]
# e.g. cluster/launch/mpirun.sh cluster/launch/hostfile.example 8 2 -- --data /shared/demo --model dicm
# Every host needs the same repository path with its .venv (shared file system or identical copies).
# Env:
#   HVAMS_NET=SUBNET|IFACE   the network MPI uses (btl_tcp_if_include and oob_tcp_if_include),
#                            e.g. 10.1.0.0/16 or eth1, for hosts with several network cards;
#   HVAMS_YIELD=auto|1|0     idle ranks yield the core (mpi_yield_when_idle); auto: when a host
#                            of the hostfile declares more slots than this machine has cores,
#                            where busy-polling ranks would take the cores of the working ones.
set -euo pipefail
hostfile=${1:?hostfile}; np=${2:?ranks}; servers=${3:?servers}; shift 3; [ "${1:-}" = "--" ] && shift
root=(); [ "$(id -u)" = 0 ] && root=(--allow-run-as-root)
mca=()
if [ -n "${HVAMS_NET:-}" ]; then
  mca+=(--mca btl_tcp_if_include "$HVAMS_NET" --mca oob_tcp_if_include "$HVAMS_NET")
fi
yield=${HVAMS_YIELD:-auto}
if [ "$yield" = auto ]; then
  most=$(grep -oE 'slots=[0-9]+' "$hostfile" | cut -d= -f2 | sort -n | tail -1)
  yield=0; [ -n "$most" ] && [ "$most" -gt "$(nproc)" ] && yield=1
fi
[ "$yield" = 1 ] && mca+=(--mca mpi_yield_when_idle 1)
cd "$(dirname "$0")/../.."
exec mpirun "${root[@]}" --hostfile "$hostfile" -np "$np" --bind-to none --map-by slot "${mca[@]}" \
  -x OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" -x PATH -x LD_LIBRARY_PATH \
  "$PWD/.venv/bin/python" -m cli train --servers "$servers" --placement spread "$@"
