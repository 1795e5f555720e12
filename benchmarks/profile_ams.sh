#!/usr/bin/env bash
# Profile one AMS training run with py-spy: a flat profile (self time by function) of
# server 0 and worker 0. py-spy is a tool, not a dependency: pip install py-spy.
# Usage: benchmarks/profile_ams.sh DATA OUT [extra hvams train flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?data directory}; OUT=${2:?output directory}; shift 2
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=1
PYSPY=${PYSPY:-py-spy}
mkdir -p "$OUT"
hvams train --data "$DATA" --local 6 --servers 2 --model dicm --batch-size 256 --no-progress \
  --max-steps 60 --out "$OUT/run" "$@" > "$OUT/train.log" 2>&1 &
job=$!
# The pid of a world rank, read from the ranks' environment (pid order is not rank order).
rank_pid() {
  for p in $(pgrep -f "python -m cli train" || true); do
    if tr '\0' '\n' < /proc/$p/environ 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$1"; then
      echo "$p"; return
    fi
  done
}
server0=""; worker0=""
for _ in $(seq 120); do
  server0=$(rank_pid 0); worker0=$(rank_pid 2)   # block placement: ranks 0-1 servers, 2-5 workers
  [ -n "$server0" ] && [ -n "$worker0" ] && break
  sleep 1
done
sleep 25  # past start-up and the first steps
"$PYSPY" record --pid "$server0" --duration 20 --rate 200 --format raw -o "$OUT/server0.txt" --nonblocking &
"$PYSPY" record --pid "$worker0" --duration 20 --rate 200 --format raw -o "$OUT/worker0.txt" --nonblocking &
wait %2 %3 || true
wait $job
for role in server0 worker0; do
  echo "== $role: top functions by self time"
  python benchmarks/flat_profile.py "$OUT/$role.txt" 14
done
