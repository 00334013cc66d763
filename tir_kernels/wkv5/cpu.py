"""RWKV-5 WKV scan, the "cpu" form (llvm): parallel tasks over (head, block of value channels)."""

import math

from tvm.script import tirx as T

DTYPE = "float32"
# Value channels per CPU task. 32 lanes = 4 independent AVX2 accumulator chains, enough to hide
# the FMA latency of the running sums; at 8 lanes the scan was latency-bound and 2x slower.
CPU_LANES = 32


# ---------------------------------------------------------------------------------------------
# "cpu": parallel tasks over (head, block of value channels), the block vectorised


def _cpu_scan(N: int, L: int, decay_per_token: bool = False):
    """Macro: scan tokens first..last for head h and value channels j0 .. j0 + L - 1.
    ``decay_per_token``: w is (T, H, N), RWKV-6's data-dependent decay, instead of (H, N).

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
                if decay_per_token:  # resolved when the macro is parsed
                    w_i = T.Bind(w[t, h, i])
                else:
                    w_i = T.Bind(w[h, i])
                for j in T.vectorized(T.int64(L)):
                    acc[j] = acc[j] + r[t, h, i] * s_out[(*state, i, j0 + j)]
                    s_out[(*state, i, j0 + j)] = w_i * s_out[(*state, i, j0 + j)] + k[t, h, i] * v[t, h, j0 + j]
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
