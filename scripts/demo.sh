#!/usr/bin/env bash
# `make demo`: synthesise the demo world if absent, then train on 2 servers + 2 workers.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
DEMO=${DEMO:-data/demo}
RUNS=${RUNS:-runs/demo}
if [ ! -f "$DEMO/world.json" ]; then
  hvams data synth --out "$DEMO" --preset demo --overwrite
fi
hvams images verify "$DEMO/images"
for model in ${DEMO_MODELS:-idonly din}; do
  echo "== training $model on $DEMO with 2 servers + 2 workers"
  hvams train --data "$DEMO" --local 4 --servers 2 --model "$model" --out "$RUNS/$model" \
    --batch-size 256 --no-progress
done
python scripts/compare_runs.py "$RUNS"/*/
