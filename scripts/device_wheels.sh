#!/usr/bin/env bash
# Wheels the lent GPU machine (Python 3.12, no package registry) needs beyond ../shared/device:
# hvams's own pure additions (pydantic and what it needs), downloaded here into .device-wheels/
# (git-ignored) and carried to the device with carry: [".device-kit", ".device-wheels"].
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${HVAMS_PYTHON:-python3.11}
rm -rf .device-wheels && mkdir -p .device-wheels
pins=$(grep -E '^pydantic==' requirements.txt)
"$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .device-wheels \
  "$pins" annotated-types typing-inspection typing-extensions
ls .device-wheels
