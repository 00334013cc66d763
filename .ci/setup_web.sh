#!/usr/bin/env bash
# CI: what tests/test_webgpu.py needs to run a model in a real browser: emscripten (emcc links
# the .wasm), chromium (headless, WebGPU on SwiftShader), node + npm, tests/web's npm packages,
# and the web runtime built once into the per-user cache. Installs only what is missing, so a
# second run takes seconds. Run after `pip install -e .` (the runtime build imports rwkv_relax).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v emcc >/dev/null || need+=(emscripten)
command -v chromium >/dev/null || need+=(chromium)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# npm ci only when node_modules does not match package-lock.json
stamp=tests/web/node_modules/.rwkv_relax-lock.sha256
lock_sum=$(sha256sum tests/web/package-lock.json | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$lock_sum" ]; then
  (cd tests/web && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_sum" > "$stamp"
fi

# TVM's web runtime from the wheel's sources (~2 min on 2 cores the first time, cached after)
if python3 -c "import importlib.util as u, sys; sys.exit(u.find_spec('rwkv_relax') is None)"; then
  python3 -m rwkv_relax.targets.webgpu.runtime >/dev/null
fi
