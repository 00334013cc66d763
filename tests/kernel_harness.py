"""What the kernel tests share: targets, compiling one PrimFunc, running it on llvm with NaN-filled
outputs and read-only inputs checked, comparing against a twin, and the device source of a build."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import tvm

LLVM = {"kind": "llvm", "mcpu": tvm.get_global_func("target.llvm_get_system_cpu")()}
CUDA = {"kind": "cuda", "arch": "sm_80", "host": {"kind": "llvm"}}
METAL = {"kind": "metal", "host": {"kind": "llvm", "mtriple": "arm64-apple-macos"}}
WEBGPU = {"kind": "webgpu", "host": {"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"}}


def compile_func(func, target, name):
    mod = tvm.IRModule({name: func.with_attr("global_symbol", name)})
    return tvm.compile(mod, tvm.target.Target(target))


def run(lib, name, inputs, out_shapes):
    """Call lib[name](*inputs, *outs); check no input was written; return the outputs.

    Outputs are pre-filled with NaN so that any element the kernel leaves unwritten fails.
    """
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(x, dev) for x in inputs]
    outs = [tvm.runtime.empty(shape, "float32", dev) for shape in out_shapes]
    for o in outs:
        o.copyfrom(np.full(o.shape, np.nan, np.float32))
    lib[name](*args, *outs)
    for before, after in zip(inputs, args):
        np.testing.assert_array_equal(after.numpy(), before)  # s_in above all: read only
    return [o.numpy() for o in outs]


def assert_close(got, ref, what, rtol):
    err = np.abs(got - ref).max()
    scale = np.abs(ref).max()
    assert err <= rtol * scale, f"{what}: max |err| {err:.3g} > {rtol} * max |ref| {scale:.3g}"


def device_source(module, kind):
    """Source of the first module of this kind among module and its imports, recursively."""
    if module.kind == kind:
        return module.inspect_source()
    for imported in module.imports:
        src = device_source(imported, kind)
        if src is not None:
            return src
    return None


def nvcc_ptx(cuda_source: str) -> str:
    """The PTX nvcc makes of a CUDA source for sm_80 (skips the test without nvcc)."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed")
    from tvm.support import nvcc

    with tvm.target.Target({"kind": "cuda", "arch": "sm_80"}):  # compile_cuda reads the arch from it
        # compiler="nvcc": the default, NVRTC, needs the cuda-bindings package
        ptx = nvcc.compile_cuda(cuda_source, target_format="ptx", arch="sm_80", compiler="nvcc")
    return bytes(ptx).decode()  # compile_cuda returns a bytearray
