"""RWKV-4 WKV recurrence as hand-authored TIR, with numpy twins.

Per channel c, in float32, exactly as ChatRWKV's ``RWKV.att_seq`` (rwkv 0.8.32, ``rwkv/model.py``)::

    for t in range(T):
        ww = u + k[t];  p = max(pp, ww);  e1 = exp(pp - p);  e2 = exp(ww - p)
        wkv[t] = (e1 * aa + e2 * v[t]) / (e1 * bb + e2)
        ww = w + pp;    p = max(ww, k[t]); e1 = exp(ww - p);  e2 = exp(k[t] - p)
        aa = e1 * aa + e2 * v[t];  bb = e1 * bb + e2;  pp = p

``w = -exp(time_decay)`` (already transformed, so negative) and ``u = time_first``. A fresh state is
``aa = bb = 0, pp = -1e30``.

Why the max trick: the plain recurrence keeps ``a = sum_i exp(k_i + decay) * v_i`` and
``b = sum_i exp(k_i + decay)``. ``exp(x)`` overflows float32 for ``x > 88.7``, and trained RWKV-4
checkpoints do produce keys that large, so ``a / b`` turns into ``inf / inf = nan``. The stable form
stores ``a = aa * exp(pp)`` and ``b = bb * exp(pp)`` with the running exponent ``pp`` kept apart,
and every ``exp`` here gets a non-positive argument (``x - max(x, y)``), so it lies in ``[0, 1]``.

Kernels (factories; ``C`` is a static Python int, sequence lengths are symbolic int64 vars):

* ``wkv4(C, target)``: one sequence. Params ``k, v (T, C), w, u (C,), s_in (3, C)``, then outputs
  ``out (T, C), s_out (3, C)``: 7 buffers. Needs ``T >= 1``.
* ``wkv4_ragged(C, target)``: B sequences packed back to back along the token axis (MLC-style batched
  prefill/decode). Params ``k, v (T_total, C), w, u (C,), s_in (3, B, C), seg_last (B,) int32``, then
  outputs ``out (T_total, C), s_out (3, B, C)``: 8 buffers. Sequence b covers tokens
  ``seg_last[b-1] + 1 .. seg_last[b]`` (inclusive; sequence 0 starts at 0) and must have at least one.
  Rows of ``out`` after ``seg_last[B-1]`` are left unwritten.

The state travels packed: rows ``s[0], s[1], s[2]`` are ``aa, bb, pp`` (``STATE_ROWS``). Three
separate buffers in and out would make 11 storage bindings (12 ragged), over the 10 that tvmjs asks
a WebGPU adapter for and WebGPU's default of 8, so the pipeline would fail in every browser. The
model keeps ChatRWKV's three (A,) entries per layer and packs them at the kernel call. The input
state buffer is only read, so a caller can keep it for rollback.

``target="cpu"``: ``T.parallel`` over chunks of ``lanes`` channels, ``lanes`` the largest of
16/8/4/2/1 dividing C; inside a chunk the serial t loop wraps a ``T.vectorized`` lane loop, and the
chunk's state sits in ``local`` buffers. ``target="gpu"``: one thread per channel
(``blockIdx.x`` x ``threadIdx.x``; for ragged, ``blockIdx.x`` also runs over b), the state in registers
across the serial t loop, and a ``c < C`` guard when C is not a multiple of the block size.
Both are marked ``tirx.is_scheduled`` so dlight leaves them alone.
"""
import numpy as np
from tvm import tirx
from tvm.script import tirx as T

STATE_ROWS = ("aa", "bb", "pp")  # the leading axis of s_in / s_out
GPU_THREADS = 64  # threads per block; small so that C = 768 still spreads over 12 blocks (SMs)

_CPU_LANES = (16, 8, 4, 2, 1)  # 16 x f32 = one AVX-512 register or two AVX2 ones
_TARGETS = ("cpu", "gpu")


def _layout(C: int, target: str):
    """(gpu, lanes, threads, n_outer): channel c = (outer * threads + thread) * lanes + lane."""
    if target not in _TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {_TARGETS}")
    if not isinstance(C, int) or C < 1:
        raise ValueError(f"C must be a positive Python int, got {C!r}")
    if target == "cpu":
        # A lane width dividing C keeps the vector loop free of a tail guard, which would
        # make VectorizeLoop scalarise the whole body.
        lanes = next(n for n in _CPU_LANES if C % n == 0)
        return False, lanes, 1, C // lanes
    return True, 1, GPU_THREADS, -(-C // GPU_THREADS)


def exp_f32_vec(x):
    """exp(x) for float32 from +, *, floor and bit shifts, so that LLVM can vectorise it.

    TVM lowers ``T.exp`` on llvm to ``llvm.exp.v16f32``, which x86 backends split into 16 scalar
    ``expf`` calls; that was most of the kernel's time. This is Cephes' ``expf`` (range reduction
    by ln 2 split in two constants + degree-6 polynomial); max relative error 8e-8 on [-87, 0]
    (glibc expf: 6e-8, numpy's float32 exp: 2e-7). The clamp to +-88 keeps 2^n's biased exponent
    n + 127 in [0, 254]: below x = -87.7 (where exp(x) is a float32 denormal) it is 0 and the result
    is exactly 0, which is what pp = -1e30 (fresh state) needs; without the clamp, or clamped
    at the usual +-88.376, rounding can give n = -128 and the bits of -inf."""
    f32 = lambda c: tirx.const(c, "float32")  # noqa: E731
    x = tirx.max(tirx.min(x, f32(88.0)), f32(-88.0))
    n = tirx.floor(x * f32(1.44269504088896341) + f32(0.5))  # round(x / ln 2)
    r = x - n * f32(0.693359375) + n * f32(2.12194440e-4)  # x - n ln 2, ln 2 = 0.693359375 - 2.12e-4
    poly = (((((f32(1.9875691500e-4) * r + f32(1.3981999507e-3)) * r + f32(8.3334519073e-3)) * r
              + f32(4.1665795894e-2)) * r + f32(1.6666665459e-1)) * r + f32(5.0000001201e-1))
    two_n = tirx.reinterpret("float32", tirx.shift_left(tirx.Cast("int32", n) + 127,
                                                        tirx.const(23, "int32")))
    return (poly * r * r + r + f32(1.0)) * two_n


def _scan_macro(gpu: bool, lanes: int):
    """The per-token update of ``lanes`` adjacent channels starting at c0, shared by both kernels.

    aa, bb, pp, w_l, u_l are ``(lanes,)`` local buffers; tokens t_begin .. t_end - 1 are processed."""

    # GPU exp is cheap already (CUDA: expf, which nvcc's default --use_fast_math makes __expf)
    exp = T.exp if gpu else exp_f32_vec

    @T.macro
    def scan(k, v, out, w_l, u_l, aa, bb, pp, c0, t_begin, t_end):
        for t in T.serial(t_begin, t_end):
            # channels innermost: one vector op per line on llvm, a no-op loop on GPU
            for l in (T.serial(lanes) if gpu else T.vectorized(lanes)):
                # `T.let`, not a plain `x = ...`: in TVM 0.27 a plain assignment makes a mutable
                # 1-element local buffer, which VectorizeLoop miscompiles (all lanes store to
                # element 0; results were off by O(1)). A Let is immutable and vectorises cleanly.
                kk: T.let = k[t, c0 + l]
                vv: T.let = v[t, c0 + l]
                ww: T.let = u_l[l] + kk
                p: T.let = T.max(pp[l], ww)
                e1: T.let = exp(pp[l] - p)
                e2: T.let = exp(ww - p)
                out[t, c0 + l] = (e1 * aa[l] + e2 * vv) / (e1 * bb[l] + e2)
                ww2: T.let = w_l[l] + pp[l]
                p2: T.let = T.max(ww2, kk)
                f1: T.let = exp(ww2 - p2)
                f2: T.let = exp(kk - p2)
                aa[l] = f1 * aa[l] + f2 * vv
                bb[l] = f1 * bb[l] + f2
                pp[l] = p2

    return scan


def wkv4(C: int, target: str = "cpu"):
    """RWKV-4 WKV over one sequence of symbolic length T >= 1 (see the module docstring).

    Params: k, v (T, C); w, u (C,); s_in (3, C); out (T, C); s_out (3, C). State rows: aa, bb, pp."""
    gpu, lanes, threads, n_outer = _layout(C, target)
    scan = _scan_macro(gpu, lanes)
    f32 = "float32"

    @T.prim_func(private=True, s_tir=True)
    def wkv4_func(var_k: T.handle, var_v: T.handle,
                  w: T.Buffer((C,), f32), u: T.Buffer((C,), f32), s_in: T.Buffer((3, C), f32),
                  var_out: T.handle, s_out: T.Buffer((3, C), f32)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        seq_len = T.int64()
        k = T.match_buffer(var_k, (seq_len, C), f32)
        v = T.match_buffer(var_v, (seq_len, C), f32)
        out = T.match_buffer(var_out, (seq_len, C), f32)
        for co in (T.thread_binding(n_outer, thread="blockIdx.x") if gpu else T.parallel(n_outer)):
            for tx in (T.thread_binding(threads, thread="threadIdx.x") if gpu else T.serial(threads)):
                with T.sblock("wkv4"):
                    vco, vtx = T.axis.remap("SS", [co, tx])
                    T.reads(k[0:seq_len, 0:C], v[0:seq_len, 0:C], w[0:C], u[0:C], s_in[0:3, 0:C])
                    T.writes(out[0:seq_len, 0:C], s_out[0:3, 0:C])
                    aa = T.alloc_buffer((lanes,), f32, scope="local")
                    bb = T.alloc_buffer((lanes,), f32, scope="local")
                    pp = T.alloc_buffer((lanes,), f32, scope="local")
                    w_l = T.alloc_buffer((lanes,), f32, scope="local")
                    u_l = T.alloc_buffer((lanes,), f32, scope="local")
                    c0: T.let = (vco * threads + vtx) * lanes
                    # Only the GPU tail block can fail this; on CPU lanes divides C and the
                    # simplifier proves it true and drops it.
                    if c0 < C:
                        for l in (T.serial(lanes) if gpu else T.vectorized(lanes)):
                            aa[l] = s_in[0, c0 + l]
                            bb[l] = s_in[1, c0 + l]
                            pp[l] = s_in[2, c0 + l]
                            w_l[l] = w[c0 + l]
                            u_l[l] = u[c0 + l]
                        scan(k, v, out, w_l, u_l, aa, bb, pp, c0, T.int64(0), seq_len)
                        for l in (T.serial(lanes) if gpu else T.vectorized(lanes)):
                            s_out[0, c0 + l] = aa[l]
                            s_out[1, c0 + l] = bb[l]
                            s_out[2, c0 + l] = pp[l]

    return wkv4_func


def wkv4_ragged(C: int, target: str = "cpu"):
    """RWKV-4 WKV over B sequences packed back to back (see the module docstring).

    Params: k, v (T_total, C); w, u (C,); s_in (3, B, C); seg_last (B,) int32; out (T_total, C);
    s_out (3, B, C). State rows: aa, bb, pp. B and T_total are symbolic."""
    gpu, lanes, threads, n_outer = _layout(C, target)
    scan = _scan_macro(gpu, lanes)
    f32 = "float32"

    @T.prim_func(private=True, s_tir=True)
    def wkv4_ragged_func(var_k: T.handle, var_v: T.handle,
                         w: T.Buffer((C,), f32), u: T.Buffer((C,), f32),
                         var_s_in: T.handle, var_seg_last: T.handle, var_out: T.handle,
                         var_s_out: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        total_len = T.int64()
        B = T.int64()
        k = T.match_buffer(var_k, (total_len, C), f32)
        v = T.match_buffer(var_v, (total_len, C), f32)
        out = T.match_buffer(var_out, (total_len, C), f32)
        s_in = T.match_buffer(var_s_in, (3, B, C), f32)
        seg_last = T.match_buffer(var_seg_last, (B,), "int32")
        s_out = T.match_buffer(var_s_out, (3, B, C), f32)
        # b and the channel chunk share one loop: nested T.parallel is not supported on llvm, and
        # one grid axis on GPU keeps decode (many sequences of 1 token) fully parallel.
        for bo in (T.thread_binding(B * n_outer, thread="blockIdx.x") if gpu
                   else T.parallel(B * n_outer)):
            for tx in (T.thread_binding(threads, thread="threadIdx.x") if gpu else T.serial(threads)):
                with T.sblock("wkv4_ragged"):
                    vbo, vtx = T.axis.remap("SS", [bo, tx])
                    T.reads(k[0:total_len, 0:C], v[0:total_len, 0:C], w[0:C], u[0:C],
                            s_in[0:3, 0:B, 0:C], seg_last[0:B])
                    T.writes(out[0:total_len, 0:C], s_out[0:3, 0:B, 0:C])
                    aa = T.alloc_buffer((lanes,), f32, scope="local")
                    bb = T.alloc_buffer((lanes,), f32, scope="local")
                    pp = T.alloc_buffer((lanes,), f32, scope="local")
                    w_l = T.alloc_buffer((lanes,), f32, scope="local")
                    u_l = T.alloc_buffer((lanes,), f32, scope="local")
                    b: T.let = vbo // n_outer
                    c0: T.let = (vbo % n_outer * threads + vtx) * lanes
                    # Select + clamped index: seg_last[-1] is never formed, even speculatively.
                    t_begin: T.let = T.Select(b == 0, T.int64(0),
                                       T.Cast("int64", seg_last[T.max(b - 1, T.int64(0))]) + 1)
                    t_end: T.let = T.Cast("int64", seg_last[b]) + 1
                    if c0 < C:
                        for l in (T.serial(lanes) if gpu else T.vectorized(lanes)):
                            aa[l] = s_in[0, b, c0 + l]
                            bb[l] = s_in[1, b, c0 + l]
                            pp[l] = s_in[2, b, c0 + l]
                            w_l[l] = w[c0 + l]
                            u_l[l] = u[c0 + l]
                        scan(k, v, out, w_l, u_l, aa, bb, pp, c0, t_begin, t_end)
                        for l in (T.serial(lanes) if gpu else T.vectorized(lanes)):
                            s_out[0, b, c0 + l] = aa[l]
                            s_out[1, b, c0 + l] = bb[l]
                            s_out[2, b, c0 + l] = pp[l]

    return wkv4_ragged_func


def wkv4_numpy(k, v, w, u, s_in):
    """Twin of ``wkv4``, same arguments: ChatRWKV's att_seq loop, line for line, in float32 (the
    kernel's precision, so the two differ only by exp rounding). k, v: (T, C); w, u: (C,);
    s_in: (3, C), rows aa, bb, pp (any sequence of three (C,) arrays will do, e.g. a tuple).
    Returns (out (T, C), s_out (3, C)); s_in is not modified."""
    f32 = np.float32
    k, v, w, u = (np.asarray(x, f32) for x in (k, v, w, u))
    aa, bb, pp = np.array(s_in, f32)  # a copy: the input stays untouched
    out = np.empty_like(k)
    for t in range(k.shape[0]):
        ww = u + k[t]
        p = np.maximum(pp, ww)
        e1 = np.exp(pp - p)
        e2 = np.exp(ww - p)
        out[t] = (e1 * aa + e2 * v[t]) / (e1 * bb + e2)
        ww = w + pp
        p = np.maximum(ww, k[t])
        e1 = np.exp(ww - p)
        e2 = np.exp(k[t] - p)
        aa = e1 * aa + e2 * v[t]
        bb = e1 * bb + e2
        pp = p
    return out, np.stack([aa, bb, pp])


def wkv4_ragged_numpy(k, v, w, u, s_in, seg_last):
    """Twin of ``wkv4_ragged``, same arguments: ``wkv4_numpy`` on each packed segment.
    s_in: (3, B, C), rows aa, bb, pp; seg_last: (B,). Returns (out (T_total, C), s_out (3, B, C));
    rows of out past the last segment stay zero (the kernel leaves them unwritten)."""
    k = np.asarray(k, np.float32)
    s_in = np.asarray(s_in, np.float32)
    out = np.zeros_like(k)
    s_out = s_in.copy()
    start = 0
    for b, last in enumerate(np.asarray(seg_last).tolist()):
        seg = slice(start, last + 1)
        out[seg], s_out[:, b] = wkv4_numpy(k[seg], v[seg], w, u, s_in[:, b])
        start = last + 1
    return out, s_out
