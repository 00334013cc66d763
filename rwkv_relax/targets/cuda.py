"""cuda: NVIDIA GPUs. nvcc builds a fatbin with SASS for the chosen arch plus PTX; on a machine
without a GPU driver the build runs in a child process with a build-only ``libcuda`` stub
preloaded, because TVM's CUDA runtime module (needed to embed nvcc's output) loads only if
libcuda.so.1 is present when TVM is imported."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .._fs import cache_dir
from ..errors import RWKVRelaxError, ToolchainError
from .preset import TargetPreset


def _cuda(chip: str | None) -> dict:
    chip = chip or "sm_90"
    if not re.fullmatch(r"sm_\d{2,3}[a-z]?", chip):
        raise RWKVRelaxError(f"CUDA chip '{chip}' is not of the form sm_XX (e.g. sm_80, sm_90a)")
    return {"kind": "cuda", "arch": chip, "max_threads_per_block": 1024,
            "max_shared_memory_per_block": 49152, "thread_warp_size": 32,
            "host": {"kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu"}}


def _export_cuda(ex, path: str, prefix: str | None) -> None:
    ex.export_library(path)
    blob = Path(path).read_bytes()
    if b"\x50\xed\x55\xba" not in blob:  # fatbin magic 0xBA55ED50: nvcc ran
        raise ToolchainError("the CUDA library holds no compiled device code (TVM's CUDA runtime did "
                             "not load); rerun the build in a fresh process")


def check_nvcc(output: str) -> None:
    if not shutil.which("nvcc"):
        raise ToolchainError("nvcc not found: install the CUDA toolkit (e.g. apt install nvidia-cuda-toolkit, "
                             "or put /usr/local/cuda/bin on PATH)")


def cuda_runtime_loaded() -> bool:
    import tvm
    return tvm.get_global_func("device_api.cuda", allow_missing=True) is not None


def install_cuda_compile_callback() -> None:
    """Make TVM compile CUDA with nvcc into a fatbin holding SASS for the target arch *and* PTX
    (forward compatibility with newer GPUs), instead of NVRTC (which needs cuda-bindings)."""
    import tvm
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


# ---- the driverless build ----------------------------------------------------------------------
def stub_libcuda_dir() -> Path:
    """A build-only ``libcuda.so.1`` (every driver call fails with CUDA_ERROR_NO_DEVICE) that lets
    TVM's CUDA runtime module load on a machine without a driver, so nvcc output can be embedded."""
    out = cache_dir("libcuda_stub")
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
            'int cuGetErrorString(int e, const char** s) '
            '{ if (s) *s = "no CUDA driver (build-only stub)"; return 0; }\n')
    (out / "stub.c").write_text(src)
    tmp = out / f".libcuda.so.1.{os.getpid()}"
    subprocess.run([cc, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(tmp), str(out / "stub.c")],
                   check=True, capture_output=True)
    os.replace(tmp, lib)
    return out


def build_in_child(kwargs: dict) -> Path:
    """Run ``pipeline.build(**kwargs)`` in a fresh process (``python -m rwkv_relax.pipeline``)
    with the stub preloaded."""
    env = dict(os.environ, LD_PRELOAD=str(stub_libcuda_dir() / "libcuda.so.1"))
    proc = subprocess.run([sys.executable, "-m", "rwkv_relax.pipeline", json.dumps(kwargs)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
        raise ToolchainError(lines[-1][len("error: "):] if lines else
                             f"the cuda build failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:300]}")
    return Path(kwargs["output"])


# ---- CUDA graphs (--cuda-graph) ---------------------------------------------------------------
CUDA_GRAPH_CONFIG = "relax.backend.use_cuda_graph"  # TVM's own switch for its RewriteCUDAGraph
# Functions whose kernels are captured. Only decode: the rewrite moves every statically planned
# buffer of the functions it sees into one allocation cached by the VM and shared by all of them,
# and create_rnn_state hands such a buffer (the zero initial WKV state) to the RNNState, which keeps
# it and copies it into every new sequence; decode's captured kernels would later overwrite it.
# Decode's own buffers die with the call (rnn_state_set copies), so capturing decode is safe.
# prefill / batch_prefill / batch_decode have symbolic lengths and gain nothing.
CUDA_GRAPH_FUNCTIONS = ("decode",)


def cuda_graph_context():
    """The current PassContext with relax.backend.use_cuda_graph on (instruments etc. kept)."""
    import tvm
    cur = tvm.transform.PassContext.current()
    return tvm.transform.PassContext(opt_level=cur.opt_level, required_pass=list(cur.required_pass),
                                     disabled_pass=list(cur.disabled_pass), instruments=list(cur.instruments),
                                     config={**dict(cur.config), CUDA_GRAPH_CONFIG: True})


def decode_cuda_graph_pass():
    """TVM's RewriteCUDAGraph on ``CUDA_GRAPH_FUNCTIONS`` alone, when the PassContext turns
    relax.backend.use_cuda_graph on (a no-op otherwise). Runs after StaticPlanBlockMemory: it lifts
    the planned buffers into a cached allocation and the kernel runs between the RNNState's
    get/set calls (packed functions, not capturable) into functions that the VM captures once as
    a CUDA graph and replays on later calls (``vm.builtin.cuda_graph.run_or_capture``)."""
    import tvm
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0, name="RewriteCUDAGraphDecode")
    def _rewrite(mod, ctx):
        if not bool(ctx.config.get(CUDA_GRAPH_CONFIG, False)):
            return mod
        aside = {gv: f for gv, f in mod.functions_items()
                 if isinstance(f, relax.Function) and gv.name_hint not in CUDA_GRAPH_FUNCTIONS}
        mod = mod.clone()
        for gv in aside:
            del mod[gv]
        mod = relax.transform.RewriteCUDAGraph()(mod)
        for gv, func in aside.items():
            mod[gv] = func
        return mod
    return _rewrite


def cuda_pipeline(target):
    from .gpu import gpu_pipeline
    return gpu_pipeline(target, after_memory_plan=[decode_cuda_graph_pass()])


CUDA = TargetPreset("cuda", _cuda, ".so", _export_cuda, False, "NVIDIA GPUs (nvcc fatbin: SASS + PTX)",
                    pipeline=cuda_pipeline, chip_help="sm_XX (default sm_90)", toolchain=check_nvcc,
                    in_child=lambda: not cuda_runtime_loaded(), run_child=build_in_child,
                    prepare=install_cuda_compile_callback)
