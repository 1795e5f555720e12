#!/usr/bin/env bash
# Launch hvams with horovodrun over several machines.
#   cluster/launch/horovodrun.sh HOSTS NP SERVERS -- [hvams train flags]
# HOSTS is horovodrun's -H list, e.g. "node1:4,node2:4" (see hosts.example), or a hostfile path.
set -euo pipefail
hosts=${1:?hosts}; np=${2:?ranks}; servers=${3:?servers}; shift 3; [ "${1:-}" = "--" ] && shift
cd "$(dirname "$0")/../.."
if [ -f "$hosts" ]; then where=(--hostfile "$hosts"); else where=(-H "$hosts"); fi
exec "$PWD/.venv/bin/horovodrun" -np "$np" "${where[@]}" --mpi \
  "$PWD/.venv/bin/python" -m cli train --servers "$servers" --placement spread "$@"
