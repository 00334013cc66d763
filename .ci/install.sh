#!/usr/bin/env bash
# Everything the tests use, from this repo's own files: Python packages (torch pinned to the CPU
# wheel), then the system tools the target tests drive (clang for OpenCL syntax checks; the web and
# OpenCL setups install emscripten/chromium/node packages and PoCL). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check torch==2.13.0 -e ".[dev]"
if [ "$(id -u)" = 0 ] && ! command -v clang >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang >/dev/null
fi
for setup in .ci/setup_web.sh .ci/setup_opencl.sh; do
    if [ -f "$setup" ]; then bash "$setup"; fi
done
