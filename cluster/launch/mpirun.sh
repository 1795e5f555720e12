#!/usr/bin/env bash
# Launch hvams with mpirun over several machines.
#   cluster/launch/mpirun.sh HOSTFILE NP SERVERS -- [hvams train flags]
# e.g. cluster/launch/mpirun.sh cluster/launch/hostfile.example 8 2 -- --data /shared/demo --model dicm
# Every host needs the same repository path with its .venv (shared file system or identical copies).
set -euo pipefail
hostfile=${1:?hostfile}; np=${2:?ranks}; servers=${3:?servers}; shift 3; [ "${1:-}" = "--" ] && shift
root=(); [ "$(id -u)" = 0 ] && root=(--allow-run-as-root)
cd "$(dirname "$0")/../.."
exec mpirun "${root[@]}" --hostfile "$hostfile" -np "$np" --bind-to none --map-by slot \
  -x OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" -x PATH -x LD_LIBRARY_PATH \
  "$PWD/.venv/bin/python" -m cli train --servers "$servers" --placement spread "$@"
