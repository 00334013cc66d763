"""RWKV-5.2 WKV kernels (tir_kernels/wkv5/) against their numpy twins.

CPU forms run on llvm. The GPU forms are checked twice without a GPU: their bodies run on llvm
with the thread bindings swapped for serial loops ("gpu-body"), and the real kernels are built
for cuda (plus nvcc -> PTX when nvcc is installed), metal and webgpu.
"""

import functools

import numpy as np
import pytest
import tvm
from kernel_harness import CUDA, LLVM, METAL, WEBGPU, assert_close, compile_func, device_source, nvcc_ptx, run
from tvm import s_tir

from tir_kernels import wkv5 as wkv5_mod
from tir_kernels.wkv5 import wkv5, wkv5_numpy, wkv5_ragged, wkv5_ragged_numpy

SINGLE_FORMS = ("schedulable", "cpu", "gpu-body")
RAGGED_FORMS = ("cpu", "gpu-body")
# (H, N): N = 64 is the real head size; 8 and 12 exercise CPU lane blocks of 8 and 4
SHAPES = [(2, 64), (4, 64), (3, 8), (2, 12)]
RTOL = 1e-4  # relative to the largest magnitude of the reference


def _single_func(form, H, N):
    if form == "gpu-body":  # the "gpu" kernel's body with serial loops instead of threads
        return wkv5_mod._wkv5_gpu(H, N, threads=False)
    return wkv5(H, N, target=form)


def _ragged_func(form, H, N):
    if form == "gpu-body":
        return wkv5_mod._wkv5_ragged_gpu(H, N, threads=False)
    return wkv5_ragged(H, N, target=form)




@functools.lru_cache(maxsize=None)
def _llvm_lib(kernel, form, H, N):
    """Compile each (kernel, form, H, N) once for the whole module."""
    func = (_single_func if kernel == "wkv5" else _ragged_func)(form, H, N)
    return compile_func(func, LLVM, kernel)


def _inputs(rng, n_tokens, H, N, n_states=None):
    """Random inputs in realistic ranges: r, k, v, w, u, s (s has a leading B if n_states)."""
    r, k, v = (rng.standard_normal((n_tokens, H, N)).astype(np.float32) for _ in range(3))
    w = rng.uniform(0.3, 0.999, (H, N)).astype(np.float32)  # exp(-exp(time_decay))
    u = rng.normal(0.0, 0.5, (H, N)).astype(np.float32)  # time_faaaa
    state_shape = (H, N, N) if n_states is None else (n_states, H, N, N)
    s = rng.standard_normal(state_shape).astype(np.float32)
    return [r, k, v, w, u, s]






@pytest.mark.parametrize("n_tokens", [1, 2, 17, 256])
@pytest.mark.parametrize("H,N", SHAPES)
@pytest.mark.parametrize("form", SINGLE_FORMS)
def test_wkv5_matches_numpy(form, H, N, n_tokens):
    rng = np.random.default_rng([SINGLE_FORMS.index(form), H, N, n_tokens])
    inputs = _inputs(rng, n_tokens, H, N)
    out, s_out = run(_llvm_lib("wkv5", form, H, N), "wkv5", inputs,
                      [(n_tokens, H, N), (H, N, N)])
    out_ref, s_ref = wkv5_numpy(*inputs)
    assert_close(out, out_ref, "out", RTOL)
    assert_close(s_out, s_ref, "s_out", RTOL)


@pytest.mark.parametrize("lengths", [(1, 5, 17), (1, 1, 1, 1), (17, 1, 5)])
@pytest.mark.parametrize("H,N", [(2, 64), (3, 8)])
@pytest.mark.parametrize("form", RAGGED_FORMS)
def test_wkv5_ragged_matches_numpy(form, H, N, lengths):
    rng = np.random.default_rng([RAGGED_FORMS.index(form), H, N, *lengths])
    n_tokens, B = sum(lengths), len(lengths)
    seg_last = (np.cumsum(lengths) - 1).astype(np.int32)
    inputs = _inputs(rng, n_tokens, H, N, n_states=B) + [seg_last]
    out, s_out = run(_llvm_lib("wkv5_ragged", form, H, N), "wkv5_ragged", inputs,
                      [(n_tokens, H, N), (B, H, N, N)])
    out_ref, s_ref = wkv5_ragged_numpy(*inputs)
    assert_close(out, out_ref, "out", RTOL)
    assert_close(s_out, s_ref, "s_out", RTOL)


@pytest.mark.parametrize("form", RAGGED_FORMS)
def test_wkv5_ragged_equals_single_kernel_per_sequence(form):
    """Packing sequences must not change any of them: compare with wkv5 run on each alone."""
    H, N, lengths = 2, 64, (1, 5, 17)
    rng = np.random.default_rng(7)
    n_tokens, B = sum(lengths), len(lengths)
    seg_last = (np.cumsum(lengths) - 1).astype(np.int32)
    r, k, v, w, u, s = _inputs(rng, n_tokens, H, N, n_states=B)
    out, s_out = run(_llvm_lib("wkv5_ragged", form, H, N), "wkv5_ragged",
                      [r, k, v, w, u, s, seg_last], [(n_tokens, H, N), (B, H, N, N)])
    single = _llvm_lib("wkv5", form, H, N)
    first = 0
    for b, last in enumerate(seg_last):
        seq = slice(first, last + 1)
        out_b, s_b = run(single, "wkv5", [r[seq], k[seq], v[seq], w, u, s[b]],
                          [(last + 1 - first, H, N), (H, N, N)])
        np.testing.assert_allclose(out[seq], out_b, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(s_out[b], s_b, rtol=1e-6, atol=1e-6)
        first = last + 1


def test_ragged_twin_rejects_bad_segments():
    r, k, v, w, u, s = _inputs(np.random.default_rng(0), 6, 1, 4, n_states=2)
    for seg_last in ([2, 2], [2, 4], [-1, 5]):  # empty sequence / tokens left over / empty
        with pytest.raises(ValueError, match="seg_last"):
            wkv5_ragged_numpy(r, k, v, w, u, s, np.array(seg_last, np.int32))


def test_unknown_target_lists_choices():
    with pytest.raises(ValueError, match="schedulable"):
        wkv5(2, 8, target="cuda")
    with pytest.raises(ValueError, match="gpu"):
        wkv5_ragged(2, 8, target="schedulable")




@functools.lru_cache(maxsize=None)
def _cuda_source(name, H, N):
    factory = wkv5 if name == "wkv5" else wkv5_ragged
    func = factory(H, N, target="gpu")
    assert func.attrs["tirx.is_scheduled"]  # dlight must leave the hand-bound kernel alone
    src = device_source(compile_func(func, CUDA, name).mod, "cuda")
    assert src is not None, "no cuda module among the imports"
    return src


@pytest.mark.parametrize("name", ["wkv5", "wkv5_ragged"])
def test_gpu_form_builds_for_cuda(name):
    src = _cuda_source(name, 4, 64)
    assert f"{name}_kernel" in src
    assert "threadIdx.x" in src and "blockIdx.x" in src
    assert "__launch_bounds__(64)" in src  # one thread per value channel


@pytest.mark.parametrize("name", ["wkv5", "wkv5_ragged"])
def test_gpu_cuda_source_compiles_with_nvcc(name):
    ptx = nvcc_ptx(_cuda_source(name, 4, 64))
    assert f".entry {name}_kernel" in ptx


@pytest.mark.parametrize("target", [METAL, WEBGPU], ids=["metal", "webgpu"])
@pytest.mark.parametrize("name", ["wkv5", "wkv5_ragged"])
def test_gpu_form_builds_for_metal_and_webgpu(name, target):
    factory = wkv5 if name == "wkv5" else wkv5_ragged
    lib = compile_func(factory(2, 64, target="gpu"), target, name)
    src = device_source(lib.mod, target["kind"])
    assert src is not None and f"{name}_kernel" in src


def test_schedulable_form_binds_to_gpu_threads():
    """The reduce-over-T form is a valid s_tir schedule input: bind h and j, build for cuda."""
    sch = s_tir.Schedule(tvm.IRModule({"main": wkv5(2, 8, target="schedulable")}))
    h, _, _, j_out = sch.get_loops(sch.get_sblock("out"))
    *_, j_state = sch.get_loops(sch.get_sblock("state"))
    sch.bind(h, "blockIdx.x")
    sch.bind(j_out, "threadIdx.x")
    sch.bind(j_state, "threadIdx.x")
    func = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    src = device_source(compile_func(func, CUDA, "wkv5").mod, "cuda")
    assert "threadIdx.x" in src and "blockIdx.x" in src
