#!/usr/bin/env bash
# mpirun on the fake cluster of up.sh: from host 1, over TCP on 198.18.0.0/24 only.
#   cluster/netns/mpirun.sh NP [mpirun options] PROGRAM [ARGS]
# e.g. cluster/netns/mpirun.sh 6 --map-by node .venv/bin/python -m cli train --servers 2 ...
set -euo pipefail
np=${1:?ranks}; shift
prefix=${HVAMS_NETNS_PREFIX:-hvams}
state=${HVAMS_NETNS_STATE:-/tmp/$prefix-netns}
here=$(cd "$(dirname "$0")" && pwd)
[ -f "$state/hostfile" ] || { echo "no fake cluster: run cluster/netns/up.sh N first" >&2; exit 2; }
root=(); [ "$(id -u)" = 0 ] && root=(--allow-run-as-root)
# Fake hosts share the real cores: yield when idle. Shared memory between fake hosts is
# excluded (only self and tcp), so every message between hosts crosses the links.
cmd=(mpirun "${root[@]}" --hostfile "$state/hostfile" -np "$np" --oversubscribe --bind-to none
     --mca plm_rsh_agent "$here/rsh-agent"
     --mca btl self,tcp --mca btl_tcp_if_include 198.18.0.0/24 --mca oob_tcp_if_include 198.18.0.0/24
     --mca mpi_yield_when_idle 1
     -x PATH -x PYTHONPATH -x OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" -x LD_LIBRARY_PATH)
for v in $(env | grep -oE '^HVAMS_[A-Z_]+' || true); do cmd+=(-x "$v"); done
h1=$prefix-h1
exec ip netns exec "$h1" unshare --uts sh -c "hostname $h1 && exec \"\$@\"" sh "${cmd[@]}" "$@"
