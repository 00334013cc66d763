"""vulkan: SPIR-V kernels. Scheduling and lowering run; the pinned TVM wheel has no SPIR-V
codegen, so the build then stops with a one-line error that says how to get one."""
from __future__ import annotations

from .preset import TargetPreset, export_plain


def _vulkan(chip: str | None) -> dict:
    return {"kind": "vulkan", "max_threads_per_block": 256, "max_shared_memory_per_block": 32768,
            "thread_warp_size": 1, "supports_float16": True, "supports_int8": True,
            "supports_16bit_buffer": True,
            "host": {"kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu"}}


VULKAN = TargetPreset(
    "vulkan", _vulkan, ".so", export_plain, False, "Vulkan (SPIR-V; needs a TVM with Vulkan)",
    missing_codegen=("target.build.vulkan",
                     "scheduling and lowering for vulkan succeeded, but this TVM wheel has no SPIR-V "
                     "codegen (target.build.vulkan is missing: built with USE_VULKAN=OFF); build TVM from "
                     "source with -DUSE_VULKAN=ON and the Vulkan SDK to write the .so"))
