#!/usr/bin/env bash
# Idempotent set-up of the hvams stack on Debian, as root or with sudo-free apt:
#   OpenMPI (apt, only when mpicc/mpirun are missing), .venv with the pinned
#   packages of requirements.txt, Horovod 0.28.1 built from source with
#   PyTorch + MPI + Gloo (wheel cached in ~/.cache/hvams/wheels), hvams itself.
# A second run that finds everything in place takes seconds.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VENV=${HVAMS_VENV:-$ROOT/.venv}
PY=${HVAMS_PYTHON:-python3.11}
CACHE=${HVAMS_CACHE:-$HOME/.cache/hvams}
log() { printf '[setup] %s\n' "$*" >&2; }

apt_install() {
  if [ "$(id -u)" != 0 ]; then log "need root to apt-get install $*"; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  if [ ! -f "$CACHE/.apt-updated" ] || [ -n "$(find "$CACHE/.apt-updated" -mmin +600 2>/dev/null)" ]; then
    apt-get update -q; mkdir -p "$CACHE"; touch "$CACHE/.apt-updated"
  fi
  apt-get install -y -q --no-install-recommends "$@"
}

# 1. System packages: OpenMPI (+ headers for mpi4py/Horovod), a compiler, cmake.
need=()
command -v mpicc  >/dev/null || need+=(libopenmpi-dev)
command -v mpirun >/dev/null || need+=(openmpi-bin)
command -v g++    >/dev/null || need+=(g++)
command -v cmake  >/dev/null || need+=(cmake)
command -v "$PY"  >/dev/null || need+=(python3.11 python3.11-dev python3.11-venv)
if [ ${#need[@]} -gt 0 ]; then log "apt-get install ${need[*]}"; apt_install "${need[@]}"; fi
if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then apt_install python3.11-venv; fi

# 2. The virtual environment with the pinned packages (horovod comes later).
stamp="$VENV/.hvams-reqs"
want=$(cat requirements.txt setup.py | sha256sum | cut -c1-16)
if [ ! -x "$VENV/bin/python" ]; then log "creating $VENV"; "$PY" -m venv "$VENV"; fi
VPY="$VENV/bin/python"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing pinned packages into $VENV"
  "$VPY" -m pip install -q --upgrade pip wheel setuptools
  grep -v -E '^(horovod|mpi4py)==' requirements.txt > "$VENV/.reqs-no-horovod.txt"
  "$VPY" -m pip install -q -r "$VENV/.reqs-no-horovod.txt"
  # mpi4py from source, linked against the system libmpi that Horovod uses.
  "$VPY" -m pip install -q --no-binary mpi4py "$(grep -E '^mpi4py==' requirements.txt)"
  "$VPY" -m pip install -q --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi

# 3. Horovod 0.28.1 from source, once per (torch, python, flags, CUDA) key.
HVD_PIN=$(grep -E '^horovod==' requirements.txt)
hvd_ok() { "$VPY" - <<'PY' 2>/dev/null
import horovod.torch as hvd
raise SystemExit(0 if hvd.mpi_built() and hvd.gloo_built() else 1)
PY
}
if ! hvd_ok; then
  export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1
  export HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
  # Torch's CUDA build + nvcc on PATH makes Horovod's CMake look for the toolkit.
  cuda_root=""
  for d in "${CUDA_HOME:-}" /usr/local/cuda; do
    if [ -n "$d" ] && [ -d "$d/include" ]; then cuda_root=$d; break; fi
  done
  if [ -n "$cuda_root" ]; then export CUDA_HOME=$cuda_root CUDAToolkit_ROOT=$cuda_root; fi
  torch_v=$("$VPY" -c 'import torch; print(torch.__version__)')
  py_v=$("$VPY" -c 'import sys; print("%d%d" % sys.version_info[:2])')
  flags="${HVD_PIN}|torch=$torch_v|py=$py_v|cuda=${cuda_root:+yes}|gpu_ops=${HOROVOD_GPU_OPERATIONS:-none}|mpi=$(mpirun --version 2>&1 | head -1)"
  key=$(printf '%s' "$flags" | sha256sum | cut -c1-12)
  wheels="$CACHE/wheels/horovod-0.28.1-torch$torch_v-py$py_v-$key"
  if ! ls "$wheels"/horovod-*.whl >/dev/null 2>&1; then
    log "building $HVD_PIN from source (about 10 minutes on 2 cores); key: $flags"
    mkdir -p "$wheels.tmp"
    # The wrapper lifts Horovod's forced -std=c++14 to the C++20 torch needs.
    HVAMS_REAL_CXX=${HVAMS_REAL_CXX:-$(command -v g++)} CXX="$ROOT/scripts/cxx20" \
      MAKEFLAGS="-j$(nproc)" \
      "$VPY" -m pip wheel --no-deps --no-build-isolation --no-binary horovod \
        -w "$wheels.tmp" "$HVD_PIN" 2>&1 | tail -n 20
    ls "$wheels.tmp"/horovod-*.whl >/dev/null
    rm -rf "$wheels"; mv "$wheels.tmp" "$wheels"
    printf '%s\n' "$flags" > "$wheels/BUILD_KEY"
  else
    log "installing cached Horovod wheel from $wheels"
  fi
  "$VPY" -m pip install -q --no-deps --force-reinstall "$wheels"/horovod-*.whl
  # Horovod's runtime deps (cloudpickle, psutil, ...) without touching torch.
  "$VPY" -m pip install -q cloudpickle psutil pyyaml packaging cffi
  hvd_ok || { log "Horovod installed but lacks MPI or Gloo"; exit 1; }
fi
log "Horovod: $("$VENV/bin/horovodrun" --check-build 2>&1 | tr '\n' ' ' | sed 's/  */ /g')"
