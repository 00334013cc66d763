"""RWKV-7 WKV kernels (tir_kernels/wkv7/) against their numpy twins.

CPU forms run on llvm (both of the "cpu" form's paths: the token counts straddle
CPU_LONG_SEQ). The GPU forms are checked twice without a GPU: their bodies run on llvm with the
thread bindings swapped for serial loops ("gpu-body"), and the real kernels are built for cuda
(plus nvcc -> PTX when nvcc is installed), metal and webgpu.
"""

import functools

import numpy as np
import pytest
from kernel_harness import CUDA, LLVM, METAL, WEBGPU, assert_close, compile_func, device_source, nvcc_ptx, run

import tir_kernels
from tir_kernels import wkv7 as wkv7_mod
from tir_kernels.wkv7 import CPU_LONG_SEQ, wkv7, wkv7_numpy, wkv7_ragged, wkv7_ragged_numpy

SINGLE_FORMS = ("cpu", "gpu-body")
RAGGED_FORMS = ("cpu", "gpu-body")
# (H, N): N = 64 is the real head size; 8 and 12 give CPU lane blocks of 8 and 4
SHAPES = [(2, 64), (4, 64), (3, 8), (2, 12)]
# 1, 2, 17: the CPU rows path; CPU_LONG_SEQ - 1 / CPU_LONG_SEQ: either side of the switch; 256:
# the transposed path
TOKENS = sorted({1, 2, 17, CPU_LONG_SEQ - 1, CPU_LONG_SEQ, 256})
RTOL = 1e-4  # relative to the largest magnitude of the reference


def _single_func(form, H, N):
    if form == "gpu-body":  # the "gpu" kernel's body with serial loops instead of threads
        return wkv7_mod._wkv7_gpu(H, N, threads=False)
    return wkv7(H, N, target=form)


def _ragged_func(form, H, N):
    if form == "gpu-body":
        return wkv7_mod._wkv7_ragged_gpu(H, N, threads=False)
    return wkv7_ragged(H, N, target=form)




@functools.lru_cache(maxsize=None)
def _llvm_lib(kernel, form, H, N):
    """Compile each (kernel, form, H, N) once for the whole module."""
    func = (_single_func if kernel == "wkv7" else _ragged_func)(form, H, N)
    return compile_func(func, LLVM, kernel)


def _inputs(rng, n_tokens, H, N, n_states=None):
    """Random inputs in realistic ranges: r, w, k, v, a, b, s (s has a leading B if n_states).

    As in RWKV-7: w in (exp(-exp(-0.5)), 1) = (0.545, 1); a = -kappa_hat and
    b = kappa_hat * a_rate with kappa_hat per-head L2-normalised and a_rate in (0, 1), which
    keeps the state bounded over long scans.
    """
    r, k, v = (rng.standard_normal((n_tokens, H, N)).astype(np.float32) for _ in range(3))
    w = rng.uniform(0.545, 1.0, (n_tokens, H, N)).astype(np.float32)
    kappa = rng.standard_normal((n_tokens, H, N))
    kappa /= np.linalg.norm(kappa, axis=-1, keepdims=True)
    a_rate = rng.uniform(0.0, 1.0, (n_tokens, H, N))
    a = (-kappa).astype(np.float32)
    b = (kappa * a_rate).astype(np.float32)
    state_shape = (H, N, N) if n_states is None else (n_states, H, N, N)
    s = rng.standard_normal(state_shape).astype(np.float32)
    return [r, w, k, v, a, b, s]






def _scalar_reference(r, w, k, v, a, b, s):
    """The equations transcribed element by element (the twin's own check), float64."""
    n_tokens, H, N = r.shape
    s = np.array(s, np.float64)
    out = np.zeros((n_tokens, H, N))
    for t in range(n_tokens):
        for h in range(H):
            for i in range(N):  # value row
                sa = sum(s[h, i, j] * a[t, h, j] for j in range(N))  # old state
                for j in range(N):  # key column
                    s[h, i, j] = s[h, i, j] * w[t, h, j] + v[t, h, i] * k[t, h, j] + sa * b[t, h, j]
                out[t, h, i] = sum(s[h, i, j] * r[t, h, j] for j in range(N))  # new state
    return out, s


def test_twin_matches_the_equations():
    inputs = _inputs(np.random.default_rng(1), 3, 2, 5)
    out, s_new = wkv7_numpy(*inputs)
    out_ref, s_ref = _scalar_reference(*inputs)
    np.testing.assert_allclose(out, out_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s_new, s_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_tokens", TOKENS)
@pytest.mark.parametrize("H,N", SHAPES)
@pytest.mark.parametrize("form", SINGLE_FORMS)
def test_wkv7_matches_numpy(form, H, N, n_tokens):
    rng = np.random.default_rng([SINGLE_FORMS.index(form), H, N, n_tokens])
    inputs = _inputs(rng, n_tokens, H, N)
    out, s_out = run(_llvm_lib("wkv7", form, H, N), "wkv7", inputs,
                      [(n_tokens, H, N), (H, N, N)])
    out_ref, s_ref = wkv7_numpy(*inputs)
    assert_close(out, out_ref, "out", RTOL)
    assert_close(s_out, s_ref, "s_out", RTOL)


# unequal lengths in scattered order, length 1 included; the last two put sequences on the
# CPU's transposed path: next to rows-path ones, and alone
RAGGED_LENGTHS = [(1, 5, 17), (1, 1, 1, 1), (17, 1, 5), (CPU_LONG_SEQ, 1, 40, 3),
                  (CPU_LONG_SEQ + 5, CPU_LONG_SEQ)]


@pytest.mark.parametrize("lengths", RAGGED_LENGTHS)
@pytest.mark.parametrize("H,N", [(2, 64), (3, 8)])
@pytest.mark.parametrize("form", RAGGED_FORMS)
def test_wkv7_ragged_matches_numpy(form, H, N, lengths):
    rng = np.random.default_rng([RAGGED_FORMS.index(form), H, N, *lengths])
    n_tokens, B = sum(lengths), len(lengths)
    seg_last = (np.cumsum(lengths) - 1).astype(np.int32)
    inputs = _inputs(rng, n_tokens, H, N, n_states=B) + [seg_last]
    out, s_out = run(_llvm_lib("wkv7_ragged", form, H, N), "wkv7_ragged", inputs,
                      [(n_tokens, H, N), (B, H, N, N)])
    out_ref, s_ref = wkv7_ragged_numpy(*inputs)
    assert_close(out, out_ref, "out", RTOL)
    assert_close(s_out, s_ref, "s_out", RTOL)


@pytest.mark.parametrize("form", RAGGED_FORMS)
def test_wkv7_ragged_equals_single_kernel_per_sequence(form):
    """Packing sequences must not change any of them: compare with wkv7 run on each alone."""
    H, N, lengths = 2, 64, (1, 5, CPU_LONG_SEQ + 3)  # both CPU paths
    rng = np.random.default_rng(7)
    n_tokens, B = sum(lengths), len(lengths)
    seg_last = (np.cumsum(lengths) - 1).astype(np.int32)
    r, w, k, v, a, b, s = _inputs(rng, n_tokens, H, N, n_states=B)
    out, s_out = run(_llvm_lib("wkv7_ragged", form, H, N), "wkv7_ragged",
                      [r, w, k, v, a, b, s, seg_last], [(n_tokens, H, N), (B, H, N, N)])
    single = _llvm_lib("wkv7", form, H, N)
    first = 0
    for i, last in enumerate(seg_last):
        seq = slice(first, last + 1)
        out_i, s_i = run(single, "wkv7", [r[seq], w[seq], k[seq], v[seq], a[seq], b[seq], s[i]],
                          [(last + 1 - first, H, N), (H, N, N)])
        np.testing.assert_allclose(out[seq], out_i, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(s_out[i], s_i, rtol=1e-6, atol=1e-6)
        first = last + 1


def test_ragged_twin_rejects_bad_segments():
    r, w, k, v, a, b, s = _inputs(np.random.default_rng(0), 6, 1, 4, n_states=2)
    for seg_last in ([2, 2], [2, 4], [-1, 5]):  # empty sequence / tokens left over / empty
        with pytest.raises(ValueError, match="seg_last"):
            wkv7_ragged_numpy(r, w, k, v, a, b, s, np.array(seg_last, np.int32))


def test_unknown_target_and_bad_sizes():
    with pytest.raises(ValueError, match="gpu"):
        wkv7(2, 8, target="cuda")
    with pytest.raises(ValueError, match="cpu"):
        wkv7_ragged(2, 8, target="schedulable")
    for H, N in ((0, 64), (2, 64.0), (2, -1)):
        with pytest.raises(ValueError, match="positive Python int"):
            wkv7(H, N)


def test_registered_and_retargetable():
    func = tir_kernels.kernel("wkv7_ragged", 2, 8)
    assert str(func.attrs["rwkv_kernel"]) == "wkv7_ragged"
    gpu = tir_kernels.retarget(func, "gpu")
    assert "threadIdx.x" in gpu.script() and "rwkv_kernel" in gpu.attrs
    assert "wkv7" in tir_kernels.FACTORIES




@functools.lru_cache(maxsize=None)
def _cuda_source(name, H, N):
    factory = wkv7 if name == "wkv7" else wkv7_ragged
    func = factory(H, N, target="gpu")
    assert func.attrs["tirx.is_scheduled"]  # dlight must leave the hand-bound kernel alone
    src = device_source(compile_func(func, CUDA, name).mod, "cuda")
    assert src is not None, "no cuda module among the imports"
    return src


@pytest.mark.parametrize("name", ["wkv7", "wkv7_ragged"])
def test_gpu_form_builds_for_cuda(name):
    src = _cuda_source(name, 4, 64)
    assert f"{name}_kernel" in src
    assert "threadIdx.x" in src and "blockIdx.x" in src
    assert "__launch_bounds__(64)" in src  # one thread per value row
    shared = [line for line in src.splitlines() if "__shared__" in line]
    assert len(shared) == 1 and "key_ptr[320]" in shared[0]  # r, w, k, a, b of a token: 5 x 64
    assert src.count("__syncthreads()") == 2  # before and after staging, once each per token


@pytest.mark.parametrize("name", ["wkv7", "wkv7_ragged"])
def test_gpu_cuda_source_compiles_with_nvcc(name):
    ptx = nvcc_ptx(_cuda_source(name, 4, 64))
    assert f".entry {name}_kernel" in ptx
    assert "bar.sync" in ptx
    assert ".local" not in ptx  # the state row stays in registers (no local-memory array)


# what the shared array and the barrier become in each shading language
_GPU_SHARED = {"metal": ("threadgroup float key[320]", "threadgroup_barrier"),
               "webgpu": ("var<workgroup> key : array<f32, 320>", "workgroupBarrier()")}


@pytest.mark.parametrize("target", [METAL, WEBGPU], ids=["metal", "webgpu"])
@pytest.mark.parametrize("name", ["wkv7", "wkv7_ragged"])
def test_gpu_form_builds_for_metal_and_webgpu(name, target):
    factory = wkv7 if name == "wkv7" else wkv7_ragged
    lib = compile_func(factory(2, 64, target="gpu"), target, name)
    src = device_source(lib.mod, target["kind"])
    assert src is not None and f"{name}_kernel" in src
    for needle in _GPU_SHARED[target["kind"]]:
        assert needle in src, needle
