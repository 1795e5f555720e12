#!/usr/bin/env bash
# `make demo`: synthesise the demo world if absent, then train ID-only and DICM on
# 2 servers + 2 workers and print one comparison table.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
DEMO=${DEMO:-data/demo}
RUNS=${RUNS:-runs/demo}
if [ ! -f "$DEMO/world.json" ]; then
  hvams data synth --out "$DEMO" --preset demo --overwrite
fi
hvams images verify "$DEMO/images"
common=(--data "$DEMO" --local 4 --servers 2 --batch-size 128 --no-progress)
echo "== idonly: ID embeddings + MLP (the paper's baseline)"
hvams train "${common[@]}" --model idonly --out "$RUNS/idonly"
echo "== dicm: + ad image and behavior images through the shared image model on the servers (AMS)"
hvams train "${common[@]}" --model dicm --out "$RUNS/dicm" \
  --backbone-weights "$DEMO/backbone/small-cnn.pt" --freeze-backbone
echo
python scripts/compare_runs.py "$RUNS/idonly" "$RUNS/dicm"
