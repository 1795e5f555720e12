#!/usr/bin/env bash
# One device call on the lent GPU machine: stages in priority order, each with its own time
# bound (540 s in all, inside a 600 s call), each writing under $OUT as it finishes, so a
# call cut short still returns what finished.
#
#   here:       cp -r ../shared/device .device-kit && bash scripts/device_wheels.sh
#   device:     bash scripts/gpu_session.sh            (carry: [".device-kit", ".device-wheels"])
#   CPU check:  bash scripts/gpu_session.sh --dry-run  (the same stages at tiny sizes; a test)
#   tables:     hvams bench gpu-tables $OUT
#
# Stages: versions (a), build (b), tests (c), speed (d), image-rate (e). Files under $OUT
# (at most 8 come back): versions.txt, build.log, pytest.txt, results.jsonl, session.log,
# planned.txt, tables.md.
set -uo pipefail
DRY=0
[ "${1:-}" = --dry-run ] && DRY=1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-/tmp/hvams-gpu}
WORK=${HVAMS_GPU_WORK:-/tmp/hvams-gpu-work}
mkdir -p "$OUT"
rm -rf "$WORK" && mkdir -p "$WORK"
LOG=$OUT/session.log
: > "$LOG"
: > "$OUT/results.jsonl"
: > "$OUT/planned.txt"
# Seconds per stage: planned from the kit's 3-minute build (H100) and about 20 s per CUDA job.
# A stage cut by its bound has its mpirun jobs killed too (distributed.launch.group_killed_on_exit).
declare -A BOUND=([versions]=20 [build]=210 [tests]=140 [speed]=140 [rate]=30)
if [ $DRY = 1 ]; then
  PY=${HVAMS_PY:-$ROOT/.venv/bin/python} DEV=cpu
  BOUND=([versions]=60 [build]=10 [tests]=240 [speed]=420 [rate]=60)
else
  PY=python3 DEV=cuda
fi
say() { echo "gpu_session: $*" | tee -a "$LOG"; }
began=$SECONDS
stage_t0=0
start() { stage_t0=$SECONDS; say "stage $1 (bound ${BOUND[$1]} s) ..."; }
done_() { printf '%-10s bound %4d s, took %4d s%s\n' "$1" "${BOUND[$1]}" $((SECONDS - stage_t0)) \
  "${2:+, $2}" >> "$OUT/planned.txt"; }
bounded() { local s=$1; shift; timeout -k 5 "${BOUND[$s]}" "$@"; }
record() {  # stage name json-file: one results.jsonl line
  "$PY" -c 'import json, sys; print(json.dumps({"stage": sys.argv[1], "name": sys.argv[2],
"result": json.load(open(sys.argv[3]))}))' "$@" >> "$OUT/results.jsonl"
}

# (a) versions and imports: one clear line and stop when something is missing.
start versions
{
  echo "dry run: $DRY ($(hostname), $(date -u +%FT%TZ))"
  "$PY" -c 'import sys, torch, torchvision; print("python", sys.version.split()[0], "| torch",
torch.__version__, "| CUDA", torch.version.cuda, "| torchvision", torchvision.__version__,
"| GPUs", torch.cuda.device_count())'
  mpirun --version 2>&1 | head -1
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  else echo "nvidia-smi: not on this machine"; fi
} > "$OUT/versions.txt" 2>&1
missing() { "$PY" - "$@" <<'PY'
import importlib.util, sys
gone = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]
print(" ".join(gone))
PY
}
gone=$(missing torch torchvision mpi4py numpy click pytest pyarrow yaml PIL)
if [ -n "$gone" ]; then
  say "stop: this machine lacks the Python modules: $gone (stage versions)"; exit 1
fi
if [ $DRY = 0 ] && ! "$PY" -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
  say "stop: torch sees no CUDA GPU here (stage versions)"; exit 1
fi
done_ versions
cat "$OUT/versions.txt" >> "$LOG"

# (b) the stack: Horovod with NCCL from the kit (the dry run uses this checkout's venv).
start build
if [ $DRY = 0 ]; then
  if ! bounded build bash .device-kit/setup-device.sh > "$OUT/build.log" 2>&1; then
    say "stop: the kit's build failed or passed ${BOUND[build]} s; build.log has its tail"
    tail -40 "$OUT/build.log" > "$OUT/build.tail" && mv "$OUT/build.tail" "$OUT/build.log"; exit 1
  fi
  source /tmp/hvams-env.sh
  "$PY" -m pip install -q --no-index --find-links .device-wheels pydantic >> "$OUT/build.log" 2>&1
else
  echo "dry run: the checkout's venv ($PY)" > "$OUT/build.log"
fi
gone=$(missing horovod lmdb pydantic)
if [ -n "$gone" ]; then say "stop: still missing after the build: $gone (stage build)"; exit 1; fi
"$PY" -m cli info >> "$OUT/build.log" 2>&1
done_ build

# (c) the CUDA tests: device selection, the decoder, chosen equivalence cases.
start tests
if [ $DRY = 0 ]; then
  # about 20 s per CUDA job: 4 equivalence jobs, the rest takes seconds
  sel=(tests/test_decoder.py
       "tests/test_device.py::test_auto_cpu_and_cuda_resolve"
       "tests/test_device.py::test_runtime_upload_download_round_trip"
       "tests/test_device.py::test_ranks_sharing_a_gpu_and_the_gradient_path_of_each_role"
       "tests/test_device.py::test_memory_format_exact_fp32_and_cached_constants"
       "tests/test_equivalence.py::test_distributed_equals_reference[1-1-idonly-adagrad-cuda]"
       "tests/test_equivalence.py::test_dicm_equals_reference[2-2-dicm-mqap-ams-False-cuda]"
       "tests/test_equivalence.py::test_channels_last_chunked_backbone_equals_reference[2-2-ams-cuda]"
       "tests/test_equivalence.py::test_bf16_equals_reference_within_bf16_bounds[cuda]")
else
  sel=("tests/test_device.py::test_ranks_sharing_a_gpu_and_the_gradient_path_of_each_role"
       "tests/test_decoder.py::test_only_grey_and_ycbcr_jpegs_go_to_the_batched_decoder[cpu]"
       "tests/test_equivalence.py::test_distributed_equals_reference[1-1-idonly-adagrad-cpu]")
fi
bounded tests "$PY" -m pytest -q -p no:cacheprovider "${sel[@]}" > "$WORK/pytest.log" 2>&1
code=$?
line=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error|skipped)' "$WORK/pytest.log" | tail -1)
cut=""; { [ $code = 124 ] || [ $code = 137 ]; } && cut=", cut at ${BOUND[tests]} s"
echo "${line:-no summary line: pytest exit $code$cut}" > "$OUT/pytest.txt"
grep -E '^(FAILED|ERROR)' "$WORK/pytest.log" >> "$OUT/pytest.txt"
tail -60 "$WORK/pytest.log" >> "$LOG"
done_ tests "$(head -1 "$OUT/pytest.txt")"

# (d) bench speed, one run at a time, each under what is left of the stage's bound.
start speed
speed_end=$((SECONDS + BOUND[speed]))
if [ $DRY = 0 ]; then
  "$PY" -m cli data synth --out "$WORK/demo" --preset demo > "$WORK/synth.log" 2>&1
  runs=("small-cnn-1x1|--backbone small-cnn --image-size 64 --variant trainable --local 2 --servers 1 --batch-size 512"
        "small-cnn-2x2|--backbone small-cnn --image-size 64 --variant trainable --local 4 --servers 2 --batch-size 512 --strategy ams --strategy store-in-worker --no-one-process"
        "resnet18-1x1|--backbone resnet18 --image-size 64 --variant trainable --local 2 --servers 1 --batch-size 256 --strategy ams"
        "vgg16-fc6-1x1|--backbone vgg16 --image-size 224 --variant frozen --local 2 --servers 1 --batch-size 128 --strategy ams --strategy store-in-worker --no-one-process")
  steps="--steps 12 --warmup 4 --rounds 1"
else
  "$PY" -m cli data synth --out "$WORK/demo" --preset tiny > "$WORK/synth.log" 2>&1
  runs=("small-cnn-1x1|--backbone small-cnn --image-size 32 --variant trainable --local 2 --servers 1 --batch-size 32"
        "small-cnn-2x2|--backbone small-cnn --image-size 32 --variant trainable --local 4 --servers 2 --batch-size 32 --strategy ams --strategy store-in-worker --no-one-process")
  steps="--steps 4 --warmup 1 --rounds 1"
fi
for run in "${runs[@]}"; do
  name=${run%%|*} args=${run#*|}
  left=$((speed_end - SECONDS))
  if [ $left -lt 15 ]; then say "speed $name: skipped, ${left} s left of the stage"; continue; fi
  # shellcheck disable=SC2086
  if timeout -k 5 $left "$PY" -m cli bench speed --data "$WORK/demo" --device $DEV $args $steps \
      --timeout $left --out "$WORK/speed-$name" > "$WORK/speed-$name.log" 2>&1; then
    record speed "$name" "$WORK/speed-$name/speed.json"
    say "speed $name: done at $((SECONDS - stage_t0)) s"
  else
    say "speed $name: failed or cut (exit $?)"; tail -15 "$WORK/speed-$name.log" >> "$LOG"
  fi
done
done_ speed

# (e) the servers' image stage against the raw rate of the same model and batch.
start rate
rate_end=$((SECONDS + BOUND[rate]))
for run in "${runs[@]}"; do
  name=${run%%|*}
  [ -f "$WORK/speed-$name/speed.json" ] || continue
  left=$((rate_end - SECONDS))
  [ $left -lt 5 ] && { say "image-rate $name: skipped, no time left"; continue; }
  timeout -k 5 $left "$PY" -m cli bench image-rate --from-speed "$WORK/speed-$name/speed.json" \
    --device $DEV --seconds 2 --record "$OUT/results.jsonl" --name "$name" >> "$LOG" 2>&1 \
    || say "image-rate $name: failed or cut"
done
done_ rate

"$PY" -m cli bench gpu-tables "$OUT" --out "$OUT/tables.md" > /dev/null 2>> "$LOG" \
  || say "the tables did not render"
say "finished in $((SECONDS - began)) s; files: $(ls "$OUT" | tr '\n' ' ')"
