"""RWKV-6 WKV kernels (tir_kernels/wkv6/) against their numpy twins.

CPU forms run on llvm. The GPU forms are checked twice without a GPU: their bodies run on llvm
with the thread bindings swapped for serial loops ("gpu-body"), and the real kernels are built
for cuda (plus nvcc -> PTX when nvcc is installed), metal and webgpu.
"""

import functools

import numpy as np
import pytest
from kernel_harness import CUDA, LLVM, METAL, WEBGPU, assert_close, compile_func, device_source, nvcc_ptx, run

from tir_kernels import wkv6 as wkv6_mod
from tir_kernels.wkv5 import wkv5_numpy
from tir_kernels.wkv6 import wkv6, wkv6_numpy, wkv6_ragged, wkv6_ragged_numpy

FORMS = ("cpu", "gpu-body")
# (H, N): N = 64 is the real head size; 8 and 12 exercise CPU lane blocks of 8 and 4
SHAPES = [(2, 64), (3, 64), (3, 8), (2, 12)]
RTOL = 1e-4  # relative to the largest magnitude of the reference


def _func(kernel, form, H, N):
    if form == "gpu-body":  # the "gpu" kernel's body with serial loops instead of threads
        return (wkv6_mod._wkv6_gpu if kernel == "wkv6" else wkv6_mod._wkv6_ragged_gpu)(H, N, threads=False)
    return (wkv6 if kernel == "wkv6" else wkv6_ragged)(H, N, target=form)


@functools.lru_cache(maxsize=None)
def _llvm_lib(kernel, form, H, N):
    """Compile each (kernel, form, H, N) once for the whole module."""
    return compile_func(_func(kernel, form, H, N), LLVM, kernel)


def _inputs(rng, n_tokens, H, N, n_states=None):
    """Random inputs in realistic ranges: r, k, v, w, u, s (s has a leading B if n_states).
    The decay spans (0, 1) from near 0 (fast-forgetting channels) to near 1 per token."""
    r, k, v = (rng.standard_normal((n_tokens, H, N)).astype(np.float32) for _ in range(3))
    d = rng.uniform(-6.0, 1.5, (n_tokens, H, N))  # time_decay + LoRA, as trained models have it
    w = np.exp(-np.exp(d)).astype(np.float32)
    u = rng.normal(0.0, 0.5, (H, N)).astype(np.float32)  # time_faaaa
    state_shape = (H, N, N) if n_states is None else (n_states, H, N, N)
    s = rng.standard_normal(state_shape).astype(np.float32)
    return [r, k, v, w, u, s]


@pytest.mark.parametrize("n_tokens", [1, 2, 17, 256])
@pytest.mark.parametrize("H,N", SHAPES)
@pytest.mark.parametrize("form", FORMS)
def test_wkv6_matches_numpy(form, H, N, n_tokens):
    rng = np.random.default_rng([FORMS.index(form), H, N, n_tokens])
    inputs = _inputs(rng, n_tokens, H, N)
    out, s_out = run(_llvm_lib("wkv6", form, H, N), "wkv6", inputs, [(n_tokens, H, N), (H, N, N)])
    out_ref, s_ref = wkv6_numpy(*inputs)
    assert_close(out, out_ref, "out", RTOL)
    assert_close(s_out, s_ref, "s_out", RTOL)


@pytest.mark.parametrize("lengths", [(1, 5, 17), (1, 1, 1, 1), (17, 1, 5)])
@pytest.mark.parametrize("H,N", [(2, 64), (3, 8)])
@pytest.mark.parametrize("form", FORMS)
def test_wkv6_ragged_matches_numpy(form, H, N, lengths):
    rng = np.random.default_rng([FORMS.index(form), H, N, *lengths])
    n_tokens, B = sum(lengths), len(lengths)
    seg_last = (np.cumsum(lengths) - 1).astype(np.int32)
    inputs = _inputs(rng, n_tokens, H, N, n_states=B) + [seg_last]
    out, s_out = run(_llvm_lib("wkv6_ragged", form, H, N), "wkv6_ragged", inputs,
                     [(n_tokens, H, N), (B, H, N, N)])
    out_ref, s_ref = wkv6_ragged_numpy(*inputs)
    assert_close(out, out_ref, "out", RTOL)
    assert_close(s_out, s_ref, "s_out", RTOL)


@pytest.mark.parametrize("form", FORMS)
def test_wkv6_ragged_equals_single_kernel_per_sequence(form):
    """Packing sequences must not change any of them: compare with wkv6 run on each alone."""
    H, N, lengths = 2, 64, (1, 5, 17)
    rng = np.random.default_rng(7)
    n_tokens, B = sum(lengths), len(lengths)
    seg_last = (np.cumsum(lengths) - 1).astype(np.int32)
    r, k, v, w, u, s = _inputs(rng, n_tokens, H, N, n_states=B)
    out, s_out = run(_llvm_lib("wkv6_ragged", form, H, N), "wkv6_ragged",
                     [r, k, v, w, u, s, seg_last], [(n_tokens, H, N), (B, H, N, N)])
    single = _llvm_lib("wkv6", form, H, N)
    first = 0
    for b, last in enumerate(seg_last):
        seq = slice(first, last + 1)
        out_b, s_b = run(single, "wkv6", [r[seq], k[seq], v[seq], w[seq], u, s[b]],
                         [(last + 1 - first, H, N), (H, N, N)])
        np.testing.assert_allclose(out[seq], out_b, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(s_out[b], s_b, rtol=1e-6, atol=1e-6)
        first = last + 1


def test_twin_is_wkv5_with_a_per_token_decay():
    """With the same decay at every token the v6 twin is the v5 twin; with decays that differ
    per token it is not (the decay really is read per token)."""
    r, k, v, w, u, s = _inputs(np.random.default_rng(3), 9, 2, 8)
    const = np.broadcast_to(w[4], w.shape)
    for got, want in zip(wkv6_numpy(r, k, v, const, u, s), wkv5_numpy(r, k, v, w[4], u, s)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert not np.allclose(wkv6_numpy(r, k, v, w, u, s)[0][1:], wkv5_numpy(r, k, v, w[4], u, s)[0][1:], atol=1e-3)


def test_output_reads_the_state_before_the_update():
    """One token with r = e_i, k = 0: out = S[i, :] exactly, whatever the decay."""
    H, N = 1, 8
    s = np.random.default_rng(1).standard_normal((H, N, N)).astype(np.float32)
    r = np.zeros((1, H, N), np.float32)
    r[0, 0, 3] = 1
    zero = np.zeros((1, H, N), np.float32)
    w = np.full((1, H, N), 0.25, np.float32)
    out, s_new = run(_llvm_lib("wkv6", "cpu", H, N), "wkv6", [r, zero, zero, w, zero[0], s],
                     [(1, H, N), (H, N, N)])
    np.testing.assert_allclose(out[0, 0], s[0, 3], rtol=1e-6)
    np.testing.assert_allclose(s_new, 0.25 * s, rtol=1e-6)


def test_ragged_twin_rejects_bad_segments():
    r, k, v, w, u, s = _inputs(np.random.default_rng(0), 6, 1, 4, n_states=2)
    for seg_last in ([2, 2], [2, 4], [-1, 5]):  # empty sequence / tokens left over / empty
        with pytest.raises(ValueError, match="seg_last"):
            wkv6_ragged_numpy(r, k, v, w, u, s, np.array(seg_last, np.int32))


def test_bad_arguments_name_the_choices():
    with pytest.raises(ValueError, match="gpu"):
        wkv6(2, 8, target="cuda")
    with pytest.raises(ValueError, match="gpu"):
        wkv6_ragged(2, 8, target="schedulable")
    with pytest.raises(ValueError, match="positive"):
        wkv6(2, 0)


@functools.lru_cache(maxsize=None)
def _cuda_source(name, H, N):
    func = (wkv6 if name == "wkv6" else wkv6_ragged)(H, N, target="gpu")
    assert func.attrs["tirx.is_scheduled"]  # dlight must leave the hand-bound kernel alone
    src = device_source(compile_func(func, CUDA, name).mod, "cuda")
    assert src is not None, "no cuda module among the imports"
    return src


@pytest.mark.parametrize("name", ["wkv6", "wkv6_ragged"])
def test_gpu_form_builds_for_cuda(name):
    src = _cuda_source(name, 4, 64)
    assert f"{name}_kernel" in src
    assert "threadIdx.x" in src and "blockIdx.x" in src
    assert "__launch_bounds__(64)" in src  # one thread per value channel


@pytest.mark.parametrize("name", ["wkv6", "wkv6_ragged"])
def test_gpu_cuda_source_compiles_with_nvcc(name):
    ptx = nvcc_ptx(_cuda_source(name, 4, 64))
    assert f".entry {name}_kernel" in ptx
    assert ".local" not in ptx  # the state column stays in registers


@pytest.mark.parametrize("target", [METAL, WEBGPU], ids=["metal", "webgpu"])
@pytest.mark.parametrize("name", ["wkv6", "wkv6_ragged"])
def test_gpu_form_builds_for_metal_and_webgpu(name, target):
    factory = wkv6 if name == "wkv6" else wkv6_ragged
    lib = compile_func(factory(2, 64, target="gpu"), target, name)
    src = device_source(lib.mod, target["kind"])
    assert src is not None and f"{name}_kernel" in src
