"""RWKV-6 WKV scan, the "cpu" form (llvm): parallel tasks over (head, block of value channels).

The scan body is RWKV-5's (``wkv5/cpu.py``: the bonus factored out of the key loop, the state
block updated in place after its row is read for the output) with the decay read per token,
w[t, h, i]; only the kernel signatures differ.
"""

import math

from tvm.script import tirx as T

from ..wkv5.cpu import CPU_LANES, _cpu_scan

DTYPE = "float32"


def _wkv6_cpu(H: int, N: int):
    """``wkv6`` for llvm: H * N / L parallel tasks, each a vectorised scan of L columns."""
    L = math.gcd(N, CPU_LANES)
    n_blocks = N // L
    scan = _cpu_scan(N, L, decay_per_token=True)

    @T.prim_func(private=True, s_tir=True)
    def wkv6(var_r: T.handle, var_k: T.handle, var_v: T.handle, var_w: T.handle,
             u: T.Buffer((H, N), DTYPE), s_in: T.Buffer((H, N, N), DTYPE),
             var_out: T.handle, s_out: T.Buffer((H, N, N), DTYPE)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        seq_len = T.int64()
        r = T.match_buffer(var_r, (seq_len, H, N), DTYPE)
        k = T.match_buffer(var_k, (seq_len, H, N), DTYPE)
        v = T.match_buffer(var_v, (seq_len, H, N), DTYPE)
        w = T.match_buffer(var_w, (seq_len, H, N), DTYPE)
        out = T.match_buffer(var_out, (seq_len, H, N), DTYPE)
        for task in T.parallel(T.int64(H * n_blocks)):
            with T.sblock("wkv"):
                vh = T.axis.spatial(H, task // n_blocks)
                vc = T.axis.spatial(n_blocks, task % n_blocks)
                T.reads(r[0:seq_len, vh, 0:N], k[0:seq_len, vh, 0:N],
                        v[0:seq_len, vh, vc * L:vc * L + L], w[0:seq_len, vh, 0:N], u[vh, 0:N],
                        s_in[vh, 0:N, vc * L:vc * L + L])
                T.writes(out[0:seq_len, vh, vc * L:vc * L + L], s_out[vh, 0:N, vc * L:vc * L + L])
                scan(r, k, v, w, u, s_in, s_out, out, (vh,), vh, vc * L, T.int64(0), seq_len - 1)

    return wkv6


def _wkv6_ragged_cpu(H: int, N: int):
    """``wkv6_ragged`` for llvm: B * H * N / L parallel tasks over (sequence, head, block)."""
    L = math.gcd(N, CPU_LANES)
    n_blocks = N // L
    scan = _cpu_scan(N, L, decay_per_token=True)

    @T.prim_func(private=True, s_tir=True)
    def wkv6_ragged(var_r: T.handle, var_k: T.handle, var_v: T.handle, var_w: T.handle,
                    u: T.Buffer((H, N), DTYPE), var_s_in: T.handle, var_seg_last: T.handle,
                    var_out: T.handle, var_s_out: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        total_len = T.int64()
        batch = T.int64()
        r = T.match_buffer(var_r, (total_len, H, N), DTYPE)
        k = T.match_buffer(var_k, (total_len, H, N), DTYPE)
        v = T.match_buffer(var_v, (total_len, H, N), DTYPE)
        w = T.match_buffer(var_w, (total_len, H, N), DTYPE)
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
                        v[0:total_len, vh, vc * L:vc * L + L], w[0:total_len, vh, 0:N],
                        u[vh, 0:N], s_in[vb, vh, 0:N, vc * L:vc * L + L], seg_last[0:batch])
                T.writes(out[0:total_len, vh, vc * L:vc * L + L],
                         s_out[vb, vh, 0:N, vc * L:vc * L + L])
                # sequence b is tokens first..last; max() keeps the load in bounds for b == 0
                first = T.Bind(T.if_then_else(
                    vb == 0, T.int64(0), T.Cast("int64", seg_last[T.max(vb - 1, 0)]) + 1))
                last = T.Bind(T.Cast("int64", seg_last[vb]))
                scan(r, k, v, w, u, s_in, s_out, out, (vb, vh), vh, vc * L, first, last)

    return wkv6_ragged
