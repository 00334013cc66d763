"""android: OpenCL kernels with AArch64 host code, a static system library for the NDK to link."""
from __future__ import annotations

from .preset import TargetPreset, export_tar


def _android(chip: str | None) -> dict:
    return {"kind": "opencl", "max_threads_per_block": 256, "max_shared_memory_per_block": 16384,
            "thread_warp_size": 1, "max_num_threads": 256,
            "host": {"kind": "llvm", "mtriple": "aarch64-linux-android", "mcpu": chip or "generic"}}


ANDROID = TargetPreset("android", _android, ".tar", export_tar, True, "Android (OpenCL, static system lib)",
                       chip_help="an AArch64 LLVM cpu (default generic)")
