"""RWKV-4 WKV kernels (tir_kernels/wkv4.py) against their numpy twins, on llvm; GPU forms build-only.

Each kernel is compiled once per channel count (``_build`` is cached), so the file runs in seconds.
"""
import functools
import shutil

import numpy as np
import pytest
import tvm

from tir_kernels.wkv4 import STATE_ROWS, wkv4, wkv4_numpy, wkv4_ragged, wkv4_ragged_numpy

RTOL = 1e-5  # measured: max |kernel - twin| / max |twin| is ~2e-7 at T = 256 (exp rounding only)
FRESH_PP = -1e30  # ChatRWKV's initial pp (rwkv/model.py, state[i*5+3] = zeros - 1e30)


@functools.lru_cache(maxsize=None)
def _llvm_target():
    cpu = tvm.get_global_func("target.llvm_get_system_cpu")()
    return tvm.target.Target({"kind": "llvm", "mcpu": cpu})


@functools.lru_cache(maxsize=None)
def _build(factory_name: str, C: int):
    """Compile wkv4 / wkv4_ragged for llvm once per C; returns the packed function."""
    factory = {"wkv4": wkv4, "wkv4_ragged": wkv4_ragged}[factory_name]
    mod = tvm.IRModule({factory_name: factory(C, "cpu").with_attr("global_symbol", factory_name)})
    return tvm.compile(mod, _llvm_target())[factory_name]


def _inputs(rng, T, C, carried, B=None):
    """Random k, v, w, u and a packed state s (3, C), rows aa, bb, pp; (3, B, C) when B is given."""
    k = rng.standard_normal((T, C), dtype=np.float32)
    v = rng.standard_normal((T, C), dtype=np.float32)
    w = -np.exp(rng.standard_normal(C).astype(np.float32))  # = -exp(time_decay), as loaded by ChatRWKV
    u = rng.standard_normal(C).astype(np.float32)
    shape = (C,) if B is None else (B, C)  # of each state row
    if carried:  # any bb > 0, pp of either sign: reachable states after some tokens
        aa = rng.standard_normal(shape).astype(np.float32)
        bb = rng.uniform(0.5, 4.0, shape).astype(np.float32)
        pp = (rng.standard_normal(shape) * 3).astype(np.float32)
    else:
        aa = np.zeros(shape, np.float32)
        bb = np.zeros(shape, np.float32)
        pp = np.full(shape, FRESH_PP, np.float32)
    return k, v, w, u, np.stack([aa, bb, pp])


def _call(fn, inputs, out_shapes):
    """Run a compiled kernel; returns numpy outputs and asserts no input was written."""
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(x, dev) for x in inputs]
    outs = [tvm.runtime.empty(s, "float32", dev) for s in out_shapes]
    fn(*args, *outs)
    for before, arg in zip(inputs, args):
        np.testing.assert_array_equal(arg.numpy(), before)  # the state is only read
    return [o.numpy() for o in outs]


def run_wkv4(k, v, w, u, s):
    """(out (T, C), s_out (3, C))."""
    T, C = k.shape
    return _call(_build("wkv4", C), [k, v, w, u, s], [(T, C), (3, C)])


def run_wkv4_ragged(k, v, w, u, s, seg_last):
    """(out (T_total, C), s_out (3, B, C))."""
    T, C = k.shape
    B = seg_last.shape[0]
    return _call(_build("wkv4_ragged", C), [k, v, w, u, s, seg_last], [(T, C), (3, B, C)])


def assert_matches(got, ref, rtol=RTOL):
    """got, ref: (out, s_out). Elementwise, relative to the largest value of out and of each state
    row (aa, bb, pp on their own scales): aa is a sum of signed terms, so a near-zero entry has a
    large relative error that says nothing about the kernel."""
    (out, s), (out_ref, s_ref) = got, ref
    assert s.shape == s_ref.shape and s.shape[0] == len(STATE_ROWS)
    for name, g, r in zip(("out", *STATE_ROWS), (out, *s), (out_ref, *s_ref)):
        assert np.all(np.isfinite(g)), name
        np.testing.assert_allclose(g, r, rtol=rtol, atol=rtol * float(np.max(np.abs(r))), err_msg=name)


# ---------------------------------------------------------------------------------------------
# single sequence


@pytest.mark.parametrize("carried", [False, True], ids=["fresh", "carried"])
@pytest.mark.parametrize("C", [64, 40, 768])
@pytest.mark.parametrize("T", [1, 2, 17, 256])
def test_wkv4_matches_twin(T, C, carried):
    rng = np.random.default_rng([T, C, carried])
    inputs = _inputs(rng, T, C, carried)
    assert_matches(run_wkv4(*inputs), wkv4_numpy(*inputs))


def test_wkv4_input_state_unchanged():
    rng = np.random.default_rng(7)
    inputs = _inputs(rng, 17, 64, carried=True)
    copies = [x.copy() for x in inputs]
    _, s = run_wkv4(*inputs)  # _call also checks the device-side inputs
    for x, x0 in zip(inputs, copies):
        np.testing.assert_array_equal(x, x0)
    assert not np.array_equal(s, inputs[4])  # the new state went to the outputs
    # the twin does not write its input state either
    wkv4_numpy(*inputs)
    np.testing.assert_array_equal(inputs[4], copies[4])


def test_wkv4_chunked_equals_whole():
    """The RNN property: two calls carrying the state equal one call over the whole sequence."""
    rng = np.random.default_rng(8)
    k, v, w, u, s = _inputs(rng, 17, 40, carried=False)
    whole = run_wkv4(k, v, w, u, s)
    out1, s = run_wkv4(k[:6], v[:6], w, u, s)
    out2, s = run_wkv4(k[6:], v[6:], w, u, s)
    assert_matches([np.concatenate([out1, out2]), s], whole)


def _naive_wkv4(k, v, w, u, dtype):
    """The textbook RWKV-4 recurrence without the max trick (fresh state):
    wkv[t] = (a + e^(u+k[t]) v[t]) / (b + e^(u+k[t])), a <- e^w a + e^k[t] v[t], b <- e^w b + e^k[t]."""
    k, v, w, u = (np.asarray(x, dtype) for x in (k, v, w, u))
    a = np.zeros_like(w)
    b = np.zeros_like(w)
    out = np.empty_like(k)
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(k.shape[0]):
            out[t] = (a + np.exp(u + k[t]) * v[t]) / (b + np.exp(u + k[t]))
            a = np.exp(w) * a + np.exp(k[t]) * v[t]
            b = np.exp(w) * b + np.exp(k[t])
    return out


def test_wkv4_large_keys_stay_finite():
    """exp(k) overflows float32 for k > 88.7: the naive float32 recurrence goes inf/nan, the kernel
    does not, and it still equals the float64 naive recurrence (which has room up to e^709)."""
    rng = np.random.default_rng(9)
    T, C = 33, 64
    k, v, w, u, s = _inputs(rng, T, C, carried=False)
    k = (rng.standard_normal((T, C)) * 50).astype(np.float32)
    k[rng.random((T, C)) < 0.05] = 200.0
    k[rng.random((T, C)) < 0.05] = -200.0

    naive32 = _naive_wkv4(k, v, w, u, np.float32)
    assert not np.all(np.isfinite(naive32)), "inputs too tame: the naive float32 formula did not overflow"

    got = run_wkv4(k, v, w, u, s)
    ref = wkv4_numpy(k, v, w, u, s)
    assert_matches(got, ref)
    naive64 = _naive_wkv4(k, v, w, u, np.float64)
    assert np.all(np.isfinite(naive64))
    np.testing.assert_allclose(got[0], naive64, rtol=1e-4, atol=1e-4 * np.max(np.abs(naive64)))


def test_twin_matches_chatrwkv_loop():
    """The numpy twin against the loop of ChatRWKV's RWKV.att_seq (rwkv 0.8.32), copied line for
    line into torch, from a carried state."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(10)
    k, v, w, u, s = _inputs(rng, 17, 64, carried=True)
    aa, bb, pp = s
    t_decay, t_first = torch.from_numpy(w), torch.from_numpy(u)
    kt, vt = torch.from_numpy(k), torch.from_numpy(v)
    taa, tbb, tpp = torch.from_numpy(aa), torch.from_numpy(bb), torch.from_numpy(pp)
    sx = torch.empty_like(kt)
    for t in range(kt.shape[0]):
        kk = kt[t]
        vv = vt[t]
        ww = t_first + kk
        p = torch.maximum(tpp, ww)
        e1 = torch.exp(tpp - p)
        e2 = torch.exp(ww - p)
        sx[t] = (e1 * taa + e2 * vv) / (e1 * tbb + e2)
        ww = t_decay + tpp
        p = torch.maximum(ww, kk)
        e1 = torch.exp(ww - p)
        e2 = torch.exp(kk - p)
        taa = e1 * taa + e2 * vv
        tbb = e1 * tbb + e2
        tpp = p
    ref = [sx.numpy(), torch.stack([taa, tbb, tpp]).numpy()]
    assert_matches(wkv4_numpy(k, v, w, u, s), ref)


# ---------------------------------------------------------------------------------------------
# ragged (sequences packed back to back)


@pytest.mark.parametrize("carried", [False, True], ids=["fresh", "carried"])
@pytest.mark.parametrize("lengths", [(1, 5, 17), (1, 1, 1, 1)], ids=["1-5-17", "4x1"])
@pytest.mark.parametrize("C", [40, 768])
def test_wkv4_ragged(C, lengths, carried):
    rng = np.random.default_rng([C, len(lengths), sum(lengths), carried])
    B = len(lengths)
    k, v, w, u, s = _inputs(rng, sum(lengths), C, carried, B=B)
    seg_last = (np.cumsum(lengths) - 1).astype(np.int32)
    got = run_wkv4_ragged(k, v, w, u, s, seg_last)
    assert_matches(got, wkv4_ragged_numpy(k, v, w, u, s, seg_last))

    # The same code per segment: the single-sequence kernel gives bit-identical results.
    start = 0
    for b, last in enumerate(seg_last):
        seg = slice(start, last + 1)
        single = run_wkv4(k[seg], v[seg], w, u, np.ascontiguousarray(s[:, b]))
        np.testing.assert_array_equal(got[0][seg], single[0])
        np.testing.assert_array_equal(got[1][:, b], single[1])
        start = last + 1


def test_ragged_twin_is_single_twin_per_segment():
    rng = np.random.default_rng(11)
    k, v, w, u, s = _inputs(rng, 7, 8, carried=True, B=2)
    s0 = s.copy()
    seg_last = np.array([2, 6], np.int32)
    out, s1 = wkv4_ragged_numpy(k, v, w, u, s, seg_last)
    np.testing.assert_array_equal(s, s0)  # input state untouched
    first = wkv4_numpy(k[:3], v[:3], w, u, s[:, 0])
    second = wkv4_numpy(k[3:], v[3:], w, u, s[:, 1])
    np.testing.assert_array_equal(out, np.concatenate([first[0], second[0]]))
    np.testing.assert_array_equal(s1, np.stack([first[1], second[1]], axis=1))  # (3, B, C)


# ---------------------------------------------------------------------------------------------
# form of the generated code


@pytest.mark.parametrize("factory", [wkv4, wkv4_ragged])
def test_attrs_and_unknown_target(factory):
    for target in ("cpu", "gpu"):
        attrs = factory(40, target).attrs
        assert bool(attrs["tirx.is_scheduled"]) and bool(attrs["tirx.noalias"])
    with pytest.raises(ValueError, match="cpu"):
        factory(40, "cuda")


@pytest.mark.parametrize("C, lanes", [(768, 16), (40, 8)])
def test_cpu_form_is_vectorised(C, lanes):
    """Channels are innermost and exp is inlined, so the LLVM IR works on <lanes x float> and calls
    no scalar expf (TVM's T.exp would become one expf call per lane on x86)."""
    mod = tvm.IRModule({"wkv4": wkv4(C, "cpu").with_attr("global_symbol", "wkv4")})
    ll = tvm.compile(mod, _llvm_target()).mod.inspect_source("ll")
    assert f"<{lanes} x float>" in ll
    assert "expf" not in ll and "llvm.exp" not in ll


# WebGPU's default maxStorageBuffersPerShaderStage; tvmjs asks the adapter for 10. Every buffer
# param becomes one storage binding of the shader (scalars such as T go into a uniform).
WEBGPU_DEFAULT_STORAGE_BUFFERS = 8


def _buffer_params(func) -> list[str]:
    """Names of the PrimFunc's buffer params (in tirx 0.27 a buffer param is a Var of BufferType)."""
    return [p.name for p in func.params if isinstance(p.ty, tvm.tirx.BufferType)]


@pytest.mark.parametrize("factory, names", [
    (wkv4, ["k", "v", "w", "u", "s_in", "out", "s_out"]),
    (wkv4_ragged, ["k", "v", "w", "u", "s_in", "seg_last", "out", "s_out"]),
])
def test_gpu_form_fits_webgpu_default_storage_buffers(factory, names):
    for target in ("cpu", "gpu"):
        func = factory(40, target)
        assert _buffer_params(func) == names  # the interface the model calls, in order
        assert len(func.params) == len(names)  # nothing but buffers
    assert len(names) <= WEBGPU_DEFAULT_STORAGE_BUFFERS


GPU_TARGETS = {
    "cuda": {"kind": "cuda", "arch": "sm_80", "host": {"kind": "llvm"}},
    "metal": {"kind": "metal", "host": {"kind": "llvm", "mtriple": "arm64-apple-macos"}},
    "webgpu": {"kind": "webgpu", "host": {"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"}},
}
THREAD_WORDS = {"cuda": ("threadIdx", "blockIdx"), "metal": ("thread_position", "threadgroup_position"),
                "webgpu": ("threadIdx", "blockIdx")}


def _device_source(executable, kind):
    """The device module's source, found by walking the imports (their depth differs by build)."""
    stack = [executable.mod]
    while stack:
        m = stack.pop()
        if m.kind == kind:
            return m.inspect_source()
        stack.extend(m.imports)
    raise AssertionError(f"no {kind} module in the build")


@pytest.mark.parametrize("kind", list(GPU_TARGETS))
@pytest.mark.parametrize("C", [40, 768])  # 40: the c < C guard of a partial block
@pytest.mark.parametrize("factory", [wkv4, wkv4_ragged])
def test_gpu_form_builds(factory, C, kind):
    target = tvm.target.Target(GPU_TARGETS[kind])
    name = factory.__name__
    mod = tvm.IRModule({name: factory(C, "gpu").with_attr("global_symbol", name)})
    src = _device_source(tvm.compile(mod, target), kind)
    thread_word, block_word = THREAD_WORDS[kind]
    assert thread_word in src
    if C > 64:  # with one block (C = 40) the block index is folded away
        assert block_word in src
    if C % 64:
        assert f"< {C}" in src or f"< {C}i" in src  # the guard survived
    if kind == "webgpu":  # what the browser binds: one storage buffer per buffer param
        assert src.count("var<storage") == len(_buffer_params(factory(C, "gpu")))
        assert src.count("var<storage") <= WEBGPU_DEFAULT_STORAGE_BUFFERS
    if kind == "cuda":
        if shutil.which("nvcc") is None:
            pytest.skip("nvcc not on PATH")
        from tvm.support import nvcc

        # compile_cuda reads Target.current(); compiler="nvcc" because the default NVRTC path
        # needs the cuda-bindings package
        with tvm.target.Target({"kind": "cuda", "arch": "sm_80"}):
            ptx = nvcc.compile_cuda(src, target_format="ptx", arch="sm_80", compiler="nvcc")
        assert b".entry" in ptx if isinstance(ptx, (bytes, bytearray)) else ".entry" in ptx


def _cuda_device():
    try:
        return tvm.cuda(0) if tvm.cuda(0).exist else None
    except Exception:  # pylint: disable=broad-except
        return None


@pytest.mark.gpu
@pytest.mark.skipif(_cuda_device() is None, reason="needs a CUDA device")
def test_gpu_form_runs_on_cuda():
    """Runs the GPU form where a device exists; nvcc's --use_fast_math exp costs a few ulp."""
    dev = _cuda_device()
    arch = "sm_" + dev.compute_version.replace(".", "")
    target = tvm.target.Target({"kind": "cuda", "arch": arch, "host": {"kind": "llvm"}})
    C, lengths = 40, (1, 5, 17)
    rng = np.random.default_rng(12)
    k, v, w, u, s = _inputs(rng, sum(lengths), C, carried=True, B=len(lengths))
    s0 = np.ascontiguousarray(s[:, 0])
    seg_last = (np.cumsum(lengths) - 1).astype(np.int32)
    for factory, inputs, ref in (
        (wkv4, [k, v, w, u, s0], wkv4_numpy(k, v, w, u, s0)),
        (wkv4_ragged, [k, v, w, u, s, seg_last], wkv4_ragged_numpy(k, v, w, u, s, seg_last)),
    ):
        name = factory.__name__
        fn = tvm.compile(tvm.IRModule({name: factory(C, "gpu").with_attr("global_symbol", name)}),
                         target)[name]
        args = [tvm.runtime.tensor(x, dev) for x in inputs]
        outs = [tvm.runtime.empty(r.shape, "float32", dev) for r in ref]
        fn(*args, *outs)
        assert_matches([o.numpy() for o in outs], ref, rtol=1e-4)
