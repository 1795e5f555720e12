#!/usr/bin/env bash
# One device call on the lent GPU machine: build the stack with the kit, run the CUDA tests,
# then the GPU benchmarks of docs/benchmarks.md, everything written under $OUT.
# Usage, from the project root: here, `cp -r ../shared/device .device-kit` and
# `bash scripts/device_wheels.sh`; then one device call with carry [".device-kit", ".device-wheels"]:
#   bash scripts/gpu_session.sh [tests|bench|quality|all]     (default all)
# quality (not in all: it needs its own device call): dicm on the bench world's 4 training days
# with a trainable backbone, small-cnn from the world's weights and resnet18 from random.
set -euo pipefail
what=${1:-all}
OUT=${OUT:-/tmp/hvams-gpu}
mkdir -p "$OUT"
bash .device-kit/setup-device.sh > "$OUT/setup.log" 2>&1 || { tail -30 "$OUT/setup.log"; exit 1; }
source /tmp/hvams-env.sh
python3 -m pip install -q --no-index --find-links .device-wheels pydantic
python3 -m cli info > "$OUT/info.txt" 2>&1 || true
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
if [ "$what" = tests ] || [ "$what" = all ]; then
  python3 -m pytest -q -p no:cacheprovider tests/test_device.py tests/test_decoder.py \
    tests/test_equivalence.py -k "cuda or device or decoder" 2>&1 | tail -40 > "$OUT/pytest-cuda.txt" || true
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  python3 -m cli data synth --out /tmp/demo --preset demo > "$OUT/synth.log" 2>&1
  for bb in small-cnn resnet18; do
    python3 -m cli bench speed --data /tmp/demo --device cuda --backbone $bb --image-size 64 \
      --variant trainable --local 6 --servers 2 --batch-size 512 --rounds 3 --steps 30 \
      --out "$OUT/speed-$bb" > "$OUT/speed-$bb.log" 2>&1 || tail -20 "$OUT/speed-$bb.log"
  done
  python3 -m cli bench speed --data /tmp/demo --device cuda --backbone vgg16 --image-size 224 \
    --variant frozen --local 6 --servers 2 --batch-size 256 --rounds 3 --steps 20 \
    --out "$OUT/speed-vgg16" > "$OUT/speed-vgg16.log" 2>&1 || tail -20 "$OUT/speed-vgg16.log"
  python3 -m cli bench comm --data /tmp/paper --preset paper --device cuda --image-size 224 \
    --out "$OUT/comm-paper" > "$OUT/comm-paper.log" 2>&1 || tail -20 "$OUT/comm-paper.log"
fi
if [ "$what" = quality ]; then
  python3 -m cli data synth --out /tmp/bench --preset bench > "$OUT/synth-bench.log" 2>&1
  python3 -m cli bench quality --data /tmp/bench --device cuda --batch-size 512 --image-size 64 \
    --train-backbone --seeds 0 --models "idonly,dicm mqap,true-attr" \
    --out "$OUT/quality-trainable-small-cnn" > "$OUT/quality-small-cnn.log" 2>&1 || tail -20 "$OUT/quality-small-cnn.log"
  python3 -m cli bench quality --data /tmp/bench --device cuda --batch-size 512 --image-size 64 \
    --train-backbone --backbone resnet18 --seeds 0 --models "dicm mqap" \
    --out "$OUT/quality-trainable-resnet18" > "$OUT/quality-resnet18.log" 2>&1 || tail -20 "$OUT/quality-resnet18.log"
fi
ls -R "$OUT" | head -50
