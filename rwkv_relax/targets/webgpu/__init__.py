"""webgpu: WGSL kernels with wasm host code, linked with TVM's web runtime (``runtime.py``, built
from the wheel's own sources with emscripten and the headers in ``headers/``) into one ``.wasm``
for tvmjs (``@mlc-ai/web-runtime``)."""
from __future__ import annotations

from ..preset import TargetPreset


def _webgpu(chip: str | None) -> dict:
    return {"kind": "webgpu", "max_num_threads": 256, "max_shared_memory_per_block": 16384,
            "thread_warp_size": 1,
            "host": {"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"}}


def _export(ex, path: str, prefix: str | None) -> None:
    from .runtime import export_wasm
    export_wasm(ex, path)


def _toolchain(output: str) -> None:
    from .runtime import check_web_toolchain
    check_web_toolchain()


# every weight is bound whole as one storage buffer; WebGPU guarantees 128 MiB per binding
# (maxStorageBufferBindingSize), e.g. a fp32 65536 x 768 head (192 MiB) fails in the browser
WEBGPU = TargetPreset("webgpu", _webgpu, ".wasm", _export, False, "browsers (WebGPU + wasm)",
                      max_tensor_bytes=128 * 2**20, toolchain=_toolchain)
