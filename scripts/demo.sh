#!/usr/bin/env bash
# `make demo`: the main job on the small built-in dataset.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
hvams info
hvams smoke --local 4 --servers 2
