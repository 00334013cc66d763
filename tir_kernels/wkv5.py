"""RWKV-5.2 WKV scan: hand-written TIR kernels and their numpy twins.

The math follows ChatRWKV's v5.2 ``time_mixing``. Per head h the state S[h, i, j] is an N x N
matrix, i the key channel and j the value channel; everything is float32:

    out[t, h, j]      = sum_i r[t, h, i] * (u[h, i] * k[t, h, i] * v[t, h, j] + S_t[h, i, j])
    S_{t+1}[h, i, j]  = w[h, i] * S_t[h, i, j] + k[t, h, i] * v[t, h, j]

``w`` is the decay already transformed to exp(-exp(time_decay)), in (0, 1); ``u`` is the bonus
(``time_faaaa``). Columns (h, j) never interact, so they are the parallel axes; t is serial.

Factories take the static sizes H (heads) and N (head size) and return a ``tvm.tirx.PrimFunc``;
sequence lengths (and the ragged kernel's batch size) are symbolic int64 variables.

Forms (the ``target`` argument):
  "schedulable"  (``wkv5`` only) sblocks and no schedule: the state is a reduction over t whose
                 ``T.init`` loads s_in. Runs as-is on llvm; GPU use needs an s_tir schedule.
  "cpu"          hand-scheduled for llvm: tasks over (head, block of value channels) run in
                 parallel, the value channels of a block are one vector, t and i are serial.
  "gpu"          hand-bound: one thread block per head (per sequence and head when ragged), one
                 thread per value channel j, the state column S[h, :, j] in registers across t.
Single-sequence and ragged kernels share their scan bodies through ``T.macro``.
"""

import math

import numpy as np
from tvm.script import tirx as T

DTYPE = "float32"
WKV5_TARGETS = ("schedulable", "cpu", "gpu")
WKV5_RAGGED_TARGETS = ("cpu", "gpu")
# Value channels per CPU task. 32 lanes = 4 independent AVX2 accumulator chains, enough to hide
# the FMA latency of the running sums; at 8 lanes the scan was latency-bound and 2x slower.
CPU_LANES = 32


def wkv5(H: int, N: int, target: str = "cpu"):
    """Single-sequence WKV scan, a PrimFunc with params (r, k, v, w, u, s_in, out, s_out).

    r, k, v, out: (T, H, N) with T symbolic; w, u: (H, N); s_in, s_out: (H, N, N).
    s_in is only read. Needs T >= 1 (for T = 0 s_out is never written).
    """
    if target == "schedulable":
        return _wkv5_schedulable(H, N)
    if target == "cpu":
        return _wkv5_cpu(H, N)
    if target == "gpu":
        return _wkv5_gpu(H, N, threads=True)
    raise ValueError(f"unknown wkv5 target {target!r}; choose one of {WKV5_TARGETS}")


def wkv5_ragged(H: int, N: int, target: str = "cpu"):
    """WKV scan over B sequences packed back to back on one token axis (batch prefill/decode).

    Params (r, k, v, w, u, s_in, seg_last, out, s_out): r, k, v, out: (T_total, H, N);
    w, u: (H, N); s_in, s_out: (B, H, N, N); seg_last: (B,) int32, the packed index of the last
    token of each sequence (inclusive), so sequence b spans seg_last[b-1]+1 .. seg_last[b] and
    sequence 0 starts at 0. Every sequence must have at least one token. B and T_total symbolic.
    """
    if target == "cpu":
        return _wkv5_ragged_cpu(H, N)
    if target == "gpu":
        return _wkv5_ragged_gpu(H, N, threads=True)
    raise ValueError(f"unknown wkv5_ragged target {target!r}; choose one of {WKV5_RAGGED_TARGETS}")


# ---------------------------------------------------------------------------------------------
# "schedulable": the scan as a reduction over t


def _wkv5_schedulable(H: int, N: int):
    """Two sblocks per step: "out" reduces over i, "state" reduces over t into s_out.

    Loops run h, t, i, j, so j is innermost and contiguous in s_out, v and out: LLVM
    auto-vectorises it as is. For a GPU, bind the h loop to blockIdx.x and both j loops to
    threadIdx.x (each thread then owns the columns S[h, :, j]; no cross-thread dependence).
    """

    @T.prim_func(private=True, s_tir=True)
    def wkv5(var_r: T.handle, var_k: T.handle, var_v: T.handle,
             w: T.Buffer((H, N), DTYPE), u: T.Buffer((H, N), DTYPE),
             s_in: T.Buffer((H, N, N), DTYPE),
             var_out: T.handle, s_out: T.Buffer((H, N, N), DTYPE)):
        T.func_attr({"tirx.noalias": True})
        seq_len = T.int64()
        r = T.match_buffer(var_r, (seq_len, H, N), DTYPE)
        k = T.match_buffer(var_k, (seq_len, H, N), DTYPE)
        v = T.match_buffer(var_v, (seq_len, H, N), DTYPE)
        out = T.match_buffer(var_out, (seq_len, H, N), DTYPE)
        for h in range(H):
            for t in range(seq_len):  # serial: the state is carried across t
                for i, j in T.grid(N, N):
                    with T.sblock("out"):  # t is spatial here, i is the reduction
                        vh, vt, vi, vj = T.axis.remap("SSRS", [h, t, i, j])
                        with T.init():
                            out[vt, vh, vj] = T.float32(0)
                        # S_t is s_in at t == 0, else what "state" left in s_out at t - 1
                        out[vt, vh, vj] = out[vt, vh, vj] + r[vt, vh, vi] * (
                            u[vh, vi] * k[vt, vh, vi] * v[vt, vh, vj]
                            + T.if_then_else(vt == 0, s_in[vh, vi, vj], s_out[vh, vi, vj]))
                for i, j in T.grid(N, N):
                    with T.sblock("state"):  # t is a REDUCE axis: s_out accumulates over t
                        vh, vi, vj = T.axis.remap("SSS", [h, i, j])
                        vt = T.axis.reduce(seq_len, t)
                        with T.init():  # runs at vt == 0, before the first update
                            s_out[vh, vi, vj] = s_in[vh, vi, vj]
                        s_out[vh, vi, vj] = (w[vh, vi] * s_out[vh, vi, vj]
                                             + k[vt, vh, vi] * v[vt, vh, vj])

    return wkv5


# ---------------------------------------------------------------------------------------------
# "cpu": parallel tasks over (head, block of value channels), the block vectorised


def _cpu_scan(N: int, L: int):
    """Macro: scan tokens first..last for head h and value channels j0 .. j0 + L - 1.

    The bonus term is factored out of the i loop, because v[t, h, j] does not depend on i:
        out[t, h, j] = v[t, h, j] * sum_i r u k  +  sum_i r[t, h, i] * S_t[h, i, j]
    which leaves 3 vector ops per state element instead of 4 (about 25% faster on llvm).
    The state block is updated in place in s_out: row i of S_t is read before it is written.
    All loops are int64 like t: mixing an int32 j with an int64 t turns v[t, h, j0 + j] into
    a gather instead of a contiguous vector load.
    ``state`` is the index prefix of this head's state: (h,) or (b, h).
    """

    @T.macro
    def scan(r, k, v, w, u, s_in, s_out, out, state, h, j0, first, last):
        acc = T.alloc_buffer((L,), DTYPE, scope="local")  # sum_i r S, one lane per j
        for i in range(T.int64(N)):
            for j in T.vectorized(T.int64(L)):
                s_out[(*state, i, j0 + j)] = s_in[(*state, i, j0 + j)]
        for t in range(first, last + 1):
            bonus = T.float32(0)  # plain assignment: a mutable local scalar (TVMScript 0.27)
            for j in T.vectorized(T.int64(L)):
                acc[j] = T.float32(0)
            for i in range(T.int64(N)):
                bonus = bonus + r[t, h, i] * u[h, i] * k[t, h, i]
                for j in T.vectorized(T.int64(L)):
                    acc[j] = acc[j] + r[t, h, i] * s_out[(*state, i, j0 + j)]
                    s_out[(*state, i, j0 + j)] = (w[h, i] * s_out[(*state, i, j0 + j)]
                                                  + k[t, h, i] * v[t, h, j0 + j])
            for j in T.vectorized(T.int64(L)):
                out[t, h, j0 + j] = acc[j] + bonus * v[t, h, j0 + j]

    return scan


def _wkv5_cpu(H: int, N: int):
    """``wkv5`` for llvm: H * N / L parallel tasks, each a vectorised scan of L columns."""
    L = math.gcd(N, CPU_LANES)
    n_blocks = N // L
    scan = _cpu_scan(N, L)

    @T.prim_func(private=True, s_tir=True)
    def wkv5(var_r: T.handle, var_k: T.handle, var_v: T.handle,
             w: T.Buffer((H, N), DTYPE), u: T.Buffer((H, N), DTYPE),
             s_in: T.Buffer((H, N, N), DTYPE),
             var_out: T.handle, s_out: T.Buffer((H, N, N), DTYPE)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        seq_len = T.int64()
        r = T.match_buffer(var_r, (seq_len, H, N), DTYPE)
        k = T.match_buffer(var_k, (seq_len, H, N), DTYPE)
        v = T.match_buffer(var_v, (seq_len, H, N), DTYPE)
        out = T.match_buffer(var_out, (seq_len, H, N), DTYPE)
        for task in T.parallel(T.int64(H * n_blocks)):
            with T.sblock("wkv"):
                vh = T.axis.spatial(H, task // n_blocks)
                vc = T.axis.spatial(n_blocks, task % n_blocks)
                T.reads(r[0:seq_len, vh, 0:N], k[0:seq_len, vh, 0:N],
                        v[0:seq_len, vh, vc * L:vc * L + L], w[vh, 0:N], u[vh, 0:N],
                        s_in[vh, 0:N, vc * L:vc * L + L])
                T.writes(out[0:seq_len, vh, vc * L:vc * L + L], s_out[vh, 0:N, vc * L:vc * L + L])
                scan(r, k, v, w, u, s_in, s_out, out, (vh,), vh, vc * L, T.int64(0), seq_len - 1)

    return wkv5


def _wkv5_ragged_cpu(H: int, N: int):
    """``wkv5_ragged`` for llvm: B * H * N / L parallel tasks over (sequence, head, block)."""
    L = math.gcd(N, CPU_LANES)
    n_blocks = N // L
    scan = _cpu_scan(N, L)

    @T.prim_func(private=True, s_tir=True)
    def wkv5_ragged(var_r: T.handle, var_k: T.handle, var_v: T.handle,
                    w: T.Buffer((H, N), DTYPE), u: T.Buffer((H, N), DTYPE),
                    var_s_in: T.handle, var_seg_last: T.handle,
                    var_out: T.handle, var_s_out: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        total_len = T.int64()
        batch = T.int64()
        r = T.match_buffer(var_r, (total_len, H, N), DTYPE)
        k = T.match_buffer(var_k, (total_len, H, N), DTYPE)
        v = T.match_buffer(var_v, (total_len, H, N), DTYPE)
        s_in = T.match_buffer(var_s_in, (batch, H, N, N), DTYPE)
        seg_last = T.match_buffer(var_seg_last, (batch,), "int32")
        out = T.match_buffer(var_out, (total_len, H, N), DTYPE)
        s_out = T.match_buffer(var_s_out, (batch, H, N, N), DTYPE)
        for task in T.parallel(batch * (H * n_blocks)):
            with T.sblock("wkv"):
                vb = T.axis.spatial(batch, task // (H * n_blocks))
                vh = T.axis.spatial(H, task // n_blocks % H)
                vc = T.axis.spatial(n_blocks, task % n_blocks)
                # the token range is data-dependent, so the regions are spelled out
                T.reads(r[0:total_len, vh, 0:N], k[0:total_len, vh, 0:N],
                        v[0:total_len, vh, vc * L:vc * L + L], w[vh, 0:N], u[vh, 0:N],
                        s_in[vb, vh, 0:N, vc * L:vc * L + L], seg_last[0:batch])
                T.writes(out[0:total_len, vh, vc * L:vc * L + L],
                         s_out[vb, vh, 0:N, vc * L:vc * L + L])
                # sequence b is tokens first..last; max() keeps the load in bounds for b == 0
                first = T.Bind(T.if_then_else(
                    vb == 0, T.int64(0), T.Cast("int64", seg_last[T.max(vb - 1, 0)]) + 1))
                last = T.Bind(T.Cast("int64", seg_last[vb]))
                scan(r, k, v, w, u, s_in, s_out, out, (vb, vh), vh, vc * L, first, last)

    return wkv5_ragged


# ---------------------------------------------------------------------------------------------
# "gpu": one thread per column (h, j), the column in registers


def _gpu_scan(N: int, threads: bool):
    """Macro: one thread's scan of column S[.., h, :, j] over tokens first..last.

    The column sits in a "local" array; with the i loops unrolled its indices are constants,
    so GPU compilers keep it in registers (nvcc sm_80: no spills). The threads of a block
    read the same r, k, u, w element at once (a broadcast) and neighbouring v, out, s_in and
    s_out elements (coalesced). ``state`` is the index prefix of this head's state.
    threads=False leaves the i loops serial, for running the body on llvm.
    """

    @T.macro
    def scan(r, k, v, w, u, s_in, s_out, out, state, h, j, first, last):
        s = T.alloc_buffer((N,), DTYPE, scope="local")  # S[.., h, :, j]
        for i in (T.unroll(N) if threads else T.serial(N)):
            s[i] = s_in[(*state, i, j)]
        for t in range(first, last + 1):
            acc = T.float32(0)  # plain assignment: a mutable local scalar (TVMScript 0.27)
            for i in (T.unroll(N) if threads else T.serial(N)):
                kv = k[t, h, i] * v[t, h, j]
                acc = acc + r[t, h, i] * (u[h, i] * kv + s[i])
                s[i] = w[h, i] * s[i] + kv
            out[t, h, j] = acc
        for i in (T.unroll(N) if threads else T.serial(N)):
            s_out[(*state, i, j)] = s[i]

    return scan


def _wkv5_gpu(H: int, N: int, threads: bool):
    """``wkv5`` for GPUs: blockIdx.x = h, threadIdx.x = j (ChatRWKV's CUDA layout).

    threads=False swaps the thread bindings for serial loops so the body can run on llvm.
    """
    scan = _gpu_scan(N, threads)

    @T.prim_func(private=True, s_tir=True)
    def wkv5(var_r: T.handle, var_k: T.handle, var_v: T.handle,
             w: T.Buffer((H, N), DTYPE), u: T.Buffer((H, N), DTYPE),
             s_in: T.Buffer((H, N, N), DTYPE),
             var_out: T.handle, s_out: T.Buffer((H, N, N), DTYPE)):
        # tirx.is_scheduled makes dlight's ApplyDefaultSchedule leave this function alone
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        seq_len = T.int64()
        r = T.match_buffer(var_r, (seq_len, H, N), DTYPE)
        k = T.match_buffer(var_k, (seq_len, H, N), DTYPE)
        v = T.match_buffer(var_v, (seq_len, H, N), DTYPE)
        out = T.match_buffer(var_out, (seq_len, H, N), DTYPE)
        for h in (T.thread_binding(H, thread="blockIdx.x") if threads else T.serial(H)):
            for j in (T.thread_binding(N, thread="threadIdx.x") if threads else T.serial(N)):
                with T.sblock("wkv"):
                    vh, vj = T.axis.remap("SS", [h, j])
                    T.reads(r[0:seq_len, vh, 0:N], k[0:seq_len, vh, 0:N], v[0:seq_len, vh, vj],
                            w[vh, 0:N], u[vh, 0:N], s_in[vh, 0:N, vj])
                    T.writes(out[0:seq_len, vh, vj], s_out[vh, 0:N, vj])
                    scan(r, k, v, w, u, s_in, s_out, out, (vh,), vh, vj, T.int64(0), seq_len - 1)

    return wkv5


def _wkv5_ragged_gpu(H: int, N: int, threads: bool):
    """``wkv5_ragged`` for GPUs: blockIdx.x = b * H + h, threadIdx.x = j.

    Each block walks its own sequence's token range, the same for all of its threads.
    threads=False swaps the thread bindings for serial loops so the body can run on llvm.
    """
    scan = _gpu_scan(N, threads)

    @T.prim_func(private=True, s_tir=True)
    def wkv5_ragged(var_r: T.handle, var_k: T.handle, var_v: T.handle,
                    w: T.Buffer((H, N), DTYPE), u: T.Buffer((H, N), DTYPE),
                    var_s_in: T.handle, var_seg_last: T.handle,
                    var_out: T.handle, var_s_out: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        total_len = T.int64()
        batch = T.int64()
        r = T.match_buffer(var_r, (total_len, H, N), DTYPE)
        k = T.match_buffer(var_k, (total_len, H, N), DTYPE)
        v = T.match_buffer(var_v, (total_len, H, N), DTYPE)
        s_in = T.match_buffer(var_s_in, (batch, H, N, N), DTYPE)
        seg_last = T.match_buffer(var_seg_last, (batch,), "int32")
        out = T.match_buffer(var_out, (total_len, H, N), DTYPE)
        s_out = T.match_buffer(var_s_out, (batch, H, N, N), DTYPE)
        for bh in (T.thread_binding(batch * H, thread="blockIdx.x") if threads
                   else T.serial(batch * H)):
            for j in (T.thread_binding(N, thread="threadIdx.x") if threads else T.serial(N)):
                with T.sblock("wkv"):
                    vb = T.axis.spatial(batch, bh // H)
                    vh = T.axis.spatial(H, bh % H)
                    vj = T.axis.spatial(N, j)
                    # the token range is data-dependent, so the regions are spelled out
                    T.reads(r[0:total_len, vh, 0:N], k[0:total_len, vh, 0:N],
                            v[0:total_len, vh, vj], w[vh, 0:N], u[vh, 0:N],
                            s_in[vb, vh, 0:N, vj], seg_last[0:batch])
                    T.writes(out[0:total_len, vh, vj], s_out[vb, vh, 0:N, vj])
                    # sequence b is tokens first..last; max() keeps the load in bounds for b == 0
                    first = T.Bind(T.if_then_else(
                        vb == 0, T.int64(0), T.Cast("int64", seg_last[T.max(vb - 1, 0)]) + 1))
                    last = T.Bind(T.Cast("int64", seg_last[vb]))
                    scan(r, k, v, w, u, s_in, s_out, out, (vb, vh), vh, vj, first, last)

    return wkv5_ragged


# ---------------------------------------------------------------------------------------------
# numpy twins


def wkv5_numpy(r, k, v, w, u, s):
    """Numpy twin of ``wkv5``: (out (T, H, N), s_new (H, N, N)), computed in float64."""
    r, k, v, w, u, s = (np.asarray(x, np.float64) for x in (r, k, v, w, u, s))
    out = np.empty_like(r)  # (T, H, N)
    for t in range(r.shape[0]):
        kv = k[t, :, :, None] * v[t, :, None, :]  # (H, N_i, N_j)
        out[t] = np.einsum("hi,hij->hj", r[t], u[:, :, None] * kv + s)
        s = w[:, :, None] * s + kv
    return out.astype(np.float32), s.astype(np.float32)


def wkv5_ragged_numpy(r, k, v, w, u, s, seg_last):
    """Numpy twin of ``wkv5_ragged``: ``wkv5_numpy`` on each packed sequence in turn."""
    seg_last = np.asarray(seg_last, np.int64)
    first = np.concatenate([[0], seg_last[:-1] + 1])
    if np.any(seg_last < first) or seg_last[-1] != r.shape[0] - 1:
        raise ValueError(f"seg_last {seg_last.tolist()} does not split {r.shape[0]} tokens "
                         "into non-empty sequences")
    out = np.empty(r.shape, np.float32)  # (T_total, H, N)
    s_new = np.empty(s.shape, np.float32)  # (B, H, N, N)
    for b, (lo, hi) in enumerate(zip(first, seg_last + 1)):
        out[lo:hi], s_new[b] = wkv5_numpy(r[lo:hi], k[lo:hi], v[lo:hi], w, u, s[b])
    return out, s_new
