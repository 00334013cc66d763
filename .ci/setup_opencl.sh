#!/usr/bin/env bash
# What tests/test_android_pocl.py needs to run the android build's OpenCL kernels on this CPU:
# PoCL (Debian's pocl-opencl-icd: an OpenCL 3.0 implementation for CPUs, fp32 only), the ICD
# loader, clinfo (to see what is there) and pyopencl. Idempotent: installs only what is missing,
# and checks at the end that an OpenCL device is visible from Python.
set -euo pipefail

APT_PACKAGES=(pocl-opencl-icd ocl-icd-libopencl1 clinfo)
PYOPENCL="pyopencl==2026.1.4"  # the version the kernels were checked with

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}"
fi

python3 -c "import pyopencl" 2>/dev/null ||
  python3 -m pip install --quiet --disable-pip-version-check "$PYOPENCL"

python3 - <<'PY'
import pyopencl as cl
devices = [d for p in cl.get_platforms() for d in p.get_devices()]
assert devices, "pyopencl sees no OpenCL device"
print(f"OpenCL: {devices[0].platform.name} / {devices[0].name} ({devices[0].version})")
PY
