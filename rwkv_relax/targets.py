"""Target presets: one table from a user-facing name to a TVM target (with its device limits),
a compile pipeline, an artifact format and the function that writes it (MLC-LLM's ``PRESET``)."""
from __future__ import annotations

import dataclasses
import math
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import numpy as np
import tvm
from tvm import relax

from .errors import ConfigError, RWKVRelaxError


class ToolchainError(RWKVRelaxError):
    """A compiler, linker or runtime piece needed for a target is missing."""


def host_cpu() -> str:
    """The host CPU name LLVM knows (TVM's default llvm target is generic x86-64, unvectorised)."""
    return tvm.get_global_func("target.llvm_get_system_cpu")()


def _llvm(arch: str | None) -> dict:
    return {"kind": "llvm", "mcpu": arch or host_cpu(), "num-cores": os.cpu_count() or 1}


def _cuda(arch: str | None) -> dict:
    arch = arch or "sm_90"
    if not re.fullmatch(r"sm_\d{2,3}[a-z]?", arch):
        raise RWKVRelaxError(f"CUDA arch '{arch}' is not of the form sm_XX (e.g. sm_80, sm_90a)")
    return {"kind": "cuda", "arch": arch, "max_threads_per_block": 1024,
            "max_shared_memory_per_block": 49152, "thread_warp_size": 32,
            "host": {"kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu"}}


def _metal(arch: str | None) -> dict:
    return {"kind": "metal", "max_threads_per_block": 1024, "max_shared_memory_per_block": 32768,
            "thread_warp_size": 32,
            "host": {"kind": "llvm", "mtriple": "arm64-apple-macos11.0.0", "mcpu": arch or "apple-m1"}}


def _iphone(arch: str | None) -> dict:
    return {"kind": "metal", "max_threads_per_block": 256, "max_shared_memory_per_block": 32768,
            "thread_warp_size": 1, "libs": ["iphoneos"],
            "host": {"kind": "llvm", "mtriple": "arm64-apple-ios14.0.0", "mcpu": arch or "apple-a12"}}


def _android(arch: str | None) -> dict:
    return {"kind": "opencl", "max_threads_per_block": 256, "max_shared_memory_per_block": 16384,
            "thread_warp_size": 1, "max_num_threads": 256,
            "host": {"kind": "llvm", "mtriple": "aarch64-linux-android", "mcpu": arch or "generic"}}


def _webgpu(arch: str | None) -> dict:
    return {"kind": "webgpu", "max_num_threads": 256, "max_shared_memory_per_block": 16384,
            "thread_warp_size": 1,
            "host": {"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"}}


def _vulkan(arch: str | None) -> dict:
    return {"kind": "vulkan", "max_threads_per_block": 256, "max_shared_memory_per_block": 32768,
            "thread_warp_size": 1, "supports_float16": True, "supports_int8": True,
            "supports_16bit_buffer": True,
            "host": {"kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu"}}


# ---- exporters: (executable, output path, system-lib prefix) -> None --------------------------
def _export_plain(ex, path: str, prefix: str) -> None:
    ex.export_library(path)


def _export_tar(ex, path: str, prefix: str) -> None:
    """A tar of the target's object files (host code + packed device code) for the platform's
    own toolchain (Xcode, the NDK) to link, as MLC-LLM ships them."""
    from tvm.support import tar
    ex.export_library(path, fcompile=tar.tar)


def _export_metal(ex, path: str, prefix: str) -> None:
    if path.endswith(".dylib"):
        if platform.system() != "Darwin" or not shutil.which("xcrun"):
            raise ToolchainError("a metal .dylib needs Xcode (xcrun) on macOS; on Linux write a .tar "
                                 "(-o lib.tar) and link it on the Mac")
        from tvm.support import xcode
        ex.export_library(path, fcompile=xcode.create_dylib, arch="arm64", sdk="macosx")
    else:
        _export_tar(ex, path, prefix)


def _export_cuda(ex, path: str, prefix: str) -> None:
    ex.export_library(path)
    blob = Path(path).read_bytes()
    if b"\x50\xed\x55\xba" not in blob:  # fatbin magic 0xBA55ED50: nvcc ran
        raise ToolchainError("the CUDA library holds no compiled device code (TVM's CUDA runtime did "
                             "not load); rerun the build in a fresh process")


def _export_vulkan(ex, path: str, prefix: str) -> None:  # never reached: codegen is missing
    ex.export_library(path)


def _export_webgpu(ex, path: str, prefix: str) -> None:
    from .web import export_wasm  # pylint: disable=import-outside-toplevel
    export_wasm(ex, path)


@dataclasses.dataclass(frozen=True)
class TargetPreset:
    name: str
    make_target: Callable[[str | None], dict]  # arch override -> TVM target dict
    extension: str
    export: Callable
    # a static system library whose symbols carry a per-model prefix, so that several models can
    # link into one app (iphone, android). wasm is a system library too, but unprefixed: one model
    # per .wasm, found by tvmjs's createVirtualMachine as web-llm expects.
    prefixed_system_lib: bool
    description: str
    # largest single weight the target can bind (None: no limit below device memory)
    max_tensor_bytes: int | None = None

    def target(self, arch: str | None = None) -> tvm.target.Target:
        return tvm.target.Target(self.make_target(arch))

    @property
    def gpu(self) -> bool:
        return self.name != "llvm"

    def check_params(self, params: dict, quantization: str) -> None:
        """Refuse a (model, mode) whose largest weight this target cannot bind."""
        if self.max_tensor_bytes is None or not params:
            return
        sizes = {name: math.prod(shape) * np.dtype(dtype).itemsize for name, (shape, dtype) in params.items()}
        name = max(sizes, key=sizes.get)
        if sizes[name] > self.max_tensor_bytes:
            raise ConfigError(
                f"{self.name} cannot run {quantization} for this model: {name} is "
                f"{sizes[name] / 2**20:.0f} MiB, over the {self.max_tensor_bytes / 2**20:.0f} MiB a "
                f"{self.name} shader can bind; " + (
                    "quantize the embedding and head too (no --keep-embedding-head)"
                    if quantization.startswith("q4") else "use a 4-bit mode (q4f16_1 or q4f32_1)"))


PRESETS: dict[str, TargetPreset] = {p.name: p for p in (
    TargetPreset("llvm", _llvm, ".so", _export_plain, False, "this machine's CPU (LLVM, host -mcpu)"),
    TargetPreset("cuda", _cuda, ".so", _export_cuda, False, "NVIDIA GPUs (nvcc fatbin: SASS + PTX)"),
    TargetPreset("metal", _metal, ".dylib" if platform.system() == "Darwin" else ".tar", _export_metal,
                 False, "Apple silicon Macs (Metal)"),
    TargetPreset("iphone", _iphone, ".tar", _export_tar, True, "iOS (Metal, static system lib)"),
    TargetPreset("android", _android, ".tar", _export_tar, True, "Android (OpenCL, static system lib)"),
    # every weight is bound whole as one storage buffer; WebGPU guarantees 128 MiB per binding
    # (maxStorageBufferBindingSize), e.g. a fp32 65536 x 768 head (192 MiB) fails in the browser
    TargetPreset("webgpu", _webgpu, ".wasm", _export_webgpu, False, "browsers (WebGPU + wasm)",
                 max_tensor_bytes=128 * 2**20),
    TargetPreset("vulkan", _vulkan, ".so", _export_vulkan, False, "Vulkan (SPIR-V; needs a TVM with Vulkan)"),
)}


def get_target(name: str) -> TargetPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise RWKVRelaxError(f"unknown target '{name}'; valid targets: {', '.join(PRESETS)}") from None


def relax_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """Legalize + operator fusion (+ dlight on GPUs). Without FuseOps every op is its own kernel."""
    if "gpu" in target.keys:
        from .gpu_pipeline import gpu_pipeline  # pylint: disable=import-outside-toplevel
        return gpu_pipeline(target)
    if target.kind.name == "llvm":  # + the matmul schedule (unscheduled matmuls run ~20x slower)
        from .cpu_schedule import cpu_pipeline  # pylint: disable=import-outside-toplevel
        return cpu_pipeline(target)
    return relax.get_default_pipeline(target)


# ---- toolchain checks ---------------------------------------------------------------------------
def stub_libcuda_dir() -> Path:
    """A build-only ``libcuda.so.1`` (every driver call fails with CUDA_ERROR_NO_DEVICE) that lets
    TVM's CUDA runtime module load on a machine without a driver, so nvcc output can be embedded."""
    out = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rwkv_relax" / "libcuda_stub"
    lib = out / "libcuda.so.1"
    if lib.is_file():
        return out
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise ToolchainError("building for cuda without a GPU driver needs a C compiler (apt install gcc)")
    out.mkdir(parents=True, exist_ok=True)
    syms = ["cuDeviceGetName", "cuFuncSetAttribute", "cuLaunchKernelEx", "cuModuleGetFunction",
            "cuModuleLoadData", "cuModuleUnload", "cuTensorMapEncodeTiled"]
    src = "".join(f"int {s}(void) {{ return 100; }}\n" for s in syms)
    src += ('int cuGetErrorName(int e, const char** s) { if (s) *s = "stub"; return 0; }\n'
            'int cuGetErrorString(int e, const char** s) { if (s) *s = "no CUDA driver (build-only stub)"; return 0; }\n')
    (out / "stub.c").write_text(src)
    tmp = out / f".libcuda.so.1.{os.getpid()}"
    subprocess.run([cc, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(tmp), str(out / "stub.c")],
                   check=True, capture_output=True)
    os.replace(tmp, lib)
    return out


def cuda_runtime_loaded() -> bool:
    return tvm.get_global_func("device_api.cuda", allow_missing=True) is not None


def check_toolchain(preset: TargetPreset, output: str) -> None:
    """Fail early, in one line, when a tool the target needs is missing."""
    if preset.name == "cuda" and not shutil.which("nvcc"):
        raise ToolchainError("nvcc not found: install the CUDA toolkit (e.g. apt install nvidia-cuda-toolkit, "
                             "or put /usr/local/cuda/bin on PATH)")
    if preset.name == "webgpu":
        from .web import check_web_toolchain  # pylint: disable=import-outside-toplevel
        check_web_toolchain()
    if preset.name == "metal" and output.endswith(".dylib"):
        _export_metal(None, output, "")  # raises on Linux


def install_cuda_compile_callback() -> None:
    """Make TVM compile CUDA with nvcc into a fatbin holding SASS for the target arch *and* PTX
    (forward compatibility with newer GPUs), instead of NVRTC (which needs cuda-bindings)."""
    import tvm_ffi
    from tvm.support import nvcc

    def compile_fatbin(code):
        target = tvm.target.Target.current()
        sm = str(target.arch)[3:]
        gencode = ["-gencode", f"arch=compute_{sm},code=sm_{sm}",
                   "-gencode", f"arch=compute_{sm},code=compute_{sm}"]
        try:
            return nvcc.compile_cuda(code, target_format="fatbin", compiler="nvcc", arch=gencode)
        except RuntimeError as err:
            last = [l for l in str(err).splitlines() if l.strip()][-1:] or ["nvcc failed"]
            raise ToolchainError(f"nvcc rejected the build for {target.arch}: {last[0][:200]}") from None
    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_fatbin, override=True)
