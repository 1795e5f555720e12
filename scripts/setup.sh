#!/usr/bin/env bash
# Idempotent set-up of the hvams stack on Debian, as root or with sudo-free apt:
#   OpenMPI (apt, only when mpicc/mpirun are missing), .venv with the pinned
#   packages of requirements.txt and requirements-peer.txt (the TorchRec peer),
#   Horovod 0.28.1 built from source with
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
command -v wrk    >/dev/null || need+=(wrk)      # the HTTP load generator of `hvams bench serve`
command -v "$PY"  >/dev/null || need+=(python3.11 python3.11-dev python3.11-venv)
if [ ${#need[@]} -gt 0 ]; then log "apt-get install ${need[*]}"; apt_install "${need[@]}"; fi
if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then apt_install python3.11-venv; fi

# 2. The virtual environment with the pinned packages (horovod comes later).
stamp="$VENV/.hvams-reqs"
want=$(cat requirements.txt requirements-peer.txt setup.py | sha256sum | cut -c1-16)
if [ ! -x "$VENV/bin/python" ]; then log "creating $VENV"; "$PY" -m venv "$VENV"; fi
VPY="$VENV/bin/python"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing pinned packages into $VENV"
  "$VPY" -m pip install -q --upgrade pip wheel setuptools
  grep -v -E '^(horovod|mpi4py)==' requirements.txt > "$VENV/.reqs-no-horovod.txt"
  "$VPY" -m pip install -q -r "$VENV/.reqs-no-horovod.txt"
  # mpi4py from source, linked against the system libmpi that Horovod uses.
  "$VPY" -m pip install -q --no-binary mpi4py "$(grep -E '^mpi4py==' requirements.txt)"
  # The TorchRec peer, without its metadata's CUDA fbgemm-gpu (requirements-peer.txt says why).
  "$VPY" -m pip install -q --no-deps -r requirements-peer.txt
  "$VPY" -m pip install -q --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi

# 3. Horovod 0.28.1 from source, once per (torch, python, flags, CUDA) key.
HVD_PIN=$(grep -E '^horovod==' requirements.txt)
hvd_ok() { "$VPY" - "${HVAMS_GPU_OPS:-auto}" <<'PY' 2>/dev/null
import sys
import horovod.torch as hvd
ok = hvd.mpi_built() and hvd.gloo_built()
# An explicit request for NCCL is not met by a CPU-only build.
raise SystemExit(0 if ok and (sys.argv[1] != "nccl" or hvd.nccl_built()) else 1)
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
  # GPU collectives: NCCL when nvcc and NCCL's headers (the nvidia-nccl wheel torch
  # installs) are present and a GPU is visible, or when HVAMS_GPU_OPS=nccl asks for it
  # (a GPU cluster's build node may have no GPU); HVAMS_GPU_OPS=none never builds them.
  gpu_ops=${HVAMS_GPU_OPS:-auto}
  nccl_home=$("$VPY" -c 'import nvidia.nccl, os; print(list(nvidia.nccl.__path__)[0])' 2>/dev/null || true)
  if [ "$gpu_ops" = auto ]; then
    gpu_ops=none
    if [ -n "$cuda_root" ] && command -v nvcc >/dev/null && [ -f "$nccl_home/include/nccl.h" ] \
       && nvidia-smi -L >/dev/null 2>&1; then gpu_ops=nccl; fi
  fi
  if [ "$gpu_ops" = nccl ]; then
    [ -f "$nccl_home/include/nccl.h" ] || { log "HVAMS_GPU_OPS=nccl but no NCCL headers (pip package nvidia-nccl)"; exit 1; }
    [ -e "$nccl_home/lib/libnccl.so" ] || ln -s "$nccl_home/lib/libnccl.so.2" "$nccl_home/lib/libnccl.so"
    export HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_HOME=$nccl_home HOROVOD_NCCL_LINK=SHARED
    export HOROVOD_CUDA_HOME=$cuda_root
  else
    unset HOROVOD_GPU_OPERATIONS
  fi
  # CMake 4 refuses gloo's old cmake_minimum_required; GCC 13 wants <string>/<cstdint> included.
  [ "$(cmake --version | head -1 | grep -oE '[0-9]+' | head -1)" -ge 4 ] && export CMAKE_POLICY_VERSION_MINIMUM=3.5
  [ "$(g++ -dumpversion | cut -d. -f1)" -ge 13 ] && export CXXFLAGS="${CXXFLAGS:-} -include string -include cstdint"
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
