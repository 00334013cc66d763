"""RWKV-7 WKV scan, the "cpu" form (llvm): two paths chosen per sequence by its length."""

import math

from tvm.script import tirx as T

DTYPE = "float32"
# Key channels per vector on the CPU rows path: one AVX-512 register (two AVX2 ones). Also the
# number of value rows per parallel task there: small tasks balance 2 cores better at T = 1
# (8.0 us against 10.6 us with one task per head, H = 12, N = 64).
CPU_LANES = 16
# Sequences with at least this many tokens take the CPU transposed path: the measured crossover
# (table below) lies between 24 and 28 tokens.
CPU_LONG_SEQ = 24


# ---------------------------------------------------------------------------------------------
# "cpu": two paths, chosen per sequence by its length
#
# Measured on the 2-core AVX-512 build box (llvm -mcpu=rocketlake, num-cores 2), H = 12, N = 64,
# median us per call, each path forced (rows path: 16-lane vectors along j, 16 value rows per
# task; transposed path: one task per head, vectors of 64 value rows, 2 partial sums per
# reduction); run-to-run noise about 10%:
#
#     tokens               1     2     4     8    16    24    32    64    512
#     rows path            7    11    20    37    75   114   149   302   3300
#     transposed path     34    38    44    59    86   113   140   248   2080
#
# For scale: a bare parallel copy of the (12, 64, 64) state takes 6.5 us on the same box, so at
# T = 1 the rows path costs about one pass over the state.
#
# Both paths do 5 vector ops per vector of state elements and token (an FMA for sa, a multiply
# and two FMAs for the update, an FMA for out). The rows path adds two horizontal sums (sa, out)
# per row and token, a tree of shuffles and adds; the transposed path has none (its sums over j
# run across registers, vectors over i), so it is 1.4-1.6x faster per token, but it has to
# transpose the head's state in and out (scalar scatters: about 30 us a call). Hence: rows for
# short sequences (decode), transposed from CPU_LONG_SEQ tokens on. The rows path's LLVM code
# keeps the token's key-side vectors (20 zmm registers at N = 64) across its row loop.
#
# All loops are int64 like t: mixing an int32 index with an int64 t turns a contiguous vector
# load into a gather (see wkv5/cpu.py). Per-task scratch arrays use scope "global": inside the
# parallel body that is a plain stack array (the small ones end up in registers); "local" ran
# the rows path 2.5x slower (L = 16) here.


def _cpu_lanes(N: int) -> int:
    """Lanes of the rows path: the largest power of two <= CPU_LANES dividing N (no tail)."""
    return math.gcd(N, CPU_LANES)


def _lane_sum(L: int):
    """Macro: part[q, 0] = sum_l part[q, l], a pairwise tree (L a power of two <= 16)."""

    @T.macro
    def lane_sum(part, q):
        if L >= 16:
            for l in T.vectorized(T.int64(8)):
                part[q, l] = part[q, l] + part[q, l + 8]
        if L >= 8:
            for l in T.vectorized(T.int64(4)):
                part[q, l] = part[q, l] + part[q, l + 4]
        if L >= 4:
            for l in T.vectorized(T.int64(2)):
                part[q, l] = part[q, l] + part[q, l + 2]
        if L >= 2:
            part[q, 0] = part[q, 0] + part[q, 1]

    return lane_sum


def _cpu_rows_scan(N: int, L: int):
    """Macro: the rows path for value rows i0 .. i0 + rows - 1 of head h, tokens first..last.

    Each row is N / L vectors along the contiguous key axis; sa and out are kept as L lane
    partial sums (part[0], part[1]) and summed by a tree. LLVM hoists the token's key-side
    vectors (5 x N / L registers) out of the row loop. The first token reads s_in and writes
    s_out; later tokens update s_out in place, so s_in is never copied.
    ``state`` is the index prefix of this head's state: (h,) or (b, h).
    """
    C = N // L
    lane_sum = _lane_sum(L)

    @T.macro
    def row_step(src, r, w, k, v, a, b, s_out, out, state, h, t, i, part):
        for l in T.vectorized(T.int64(L)):
            part[0, l] = T.float32(0)
            part[1, l] = T.float32(0)
        for c in T.unroll(T.int64(C)):
            for l in T.vectorized(T.int64(L)):
                part[0, l] = part[0, l] + src[(*state, i, c * L + l)] * a[t, h, c * L + l]
        lane_sum(part, 0)
        sa = T.Bind(part[0, 0])
        v_row = T.Bind(v[t, h, i])
        for c in T.unroll(T.int64(C)):
            for l in T.vectorized(T.int64(L)):
                s_out[(*state, i, c * L + l)] = (src[(*state, i, c * L + l)] * w[t, h, c * L + l]
                                                 + v_row * k[t, h, c * L + l]
                                                 + sa * b[t, h, c * L + l])
                part[1, l] = part[1, l] + s_out[(*state, i, c * L + l)] * r[t, h, c * L + l]
        lane_sum(part, 1)
        out[t, h, i] = part[1, 0]

    @T.macro
    def scan(r, w, k, v, a, b, s_in, s_out, out, state, h, i0, rows, first, last):
        part = T.alloc_buffer((2, L), DTYPE, scope="global")  # lane partials of sa, out
        for i in range(T.int64(rows)):
            row_step(s_in, r, w, k, v, a, b, s_out, out, state, h, first, i0 + i, part)
        for t in range(first + 1, last + 1):
            for i in range(T.int64(rows)):
                row_step(s_out, r, w, k, v, a, b, s_out, out, state, h, t, i0 + i, part)

    return scan


def _cpu_transposed_scan(N: int):
    """Macro: the transposed path for all N value rows of head h, tokens first..last.

    p[j, i] = S[h, i, j] in a stack array (N * N floats, L1-resident): every state operation is
    then a vector over the value rows i times a broadcast key-side scalar, and both sums (over
    j) accumulate vectors, in U independent chains to hide the FMA latency. Two passes over p
    per token, since sa needs the whole old row before the update.
    """
    U = 2 if N % 2 == 0 else 1
    JJ = N // U

    @T.macro
    def scan(r, w, k, v, a, b, s_in, s_out, out, state, h, first, last):
        p = T.alloc_buffer((N, N), DTYPE, scope="global")  # [key j, value i]
        sa = T.alloc_buffer((U, N), DTYPE, scope="global")
        acc = T.alloc_buffer((U, N), DTYPE, scope="global")
        for i in range(T.int64(N)):
            for j in T.vectorized(T.int64(N)):
                p[j, i] = s_in[(*state, i, j)]
        for t in range(first, last + 1):
            for u in T.unroll(T.int64(U)):
                for i in T.vectorized(T.int64(N)):
                    sa[u, i] = T.float32(0)
                    acc[u, i] = T.float32(0)
            for jj in range(T.int64(JJ)):
                for u in T.unroll(T.int64(U)):
                    for i in T.vectorized(T.int64(N)):
                        sa[u, i] = sa[u, i] + p[jj * U + u, i] * a[t, h, jj * U + u]
            for u in T.unroll(T.int64(U - 1)):
                for i in T.vectorized(T.int64(N)):
                    sa[0, i] = sa[0, i] + sa[u + 1, i]
            for jj in range(T.int64(JJ)):
                for u in T.unroll(T.int64(U)):
                    for i in T.vectorized(T.int64(N)):
                        p[jj * U + u, i] = (p[jj * U + u, i] * w[t, h, jj * U + u]
                                            + v[t, h, i] * k[t, h, jj * U + u]
                                            + sa[0, i] * b[t, h, jj * U + u])
                        acc[u, i] = acc[u, i] + p[jj * U + u, i] * r[t, h, jj * U + u]
            for u in T.unroll(T.int64(U - 1)):
                for i in T.vectorized(T.int64(N)):
                    acc[0, i] = acc[0, i] + acc[u + 1, i]
            for i in T.vectorized(T.int64(N)):
                out[t, h, i] = acc[0, i]
        for i in range(T.int64(N)):
            for j in T.vectorized(T.int64(N)):
                s_out[(*state, i, j)] = p[j, i]

    return scan


def _wkv7_cpu(H: int, N: int):
    """``wkv7`` for llvm: below CPU_LONG_SEQ tokens H * N / L parallel tasks of L value rows
    on the rows path, else H parallel tasks (one per head) on the transposed path."""
    L = _cpu_lanes(N)
    n_blocks = N // L
    rows_scan = _cpu_rows_scan(N, L)
    long_scan = _cpu_transposed_scan(N)

    @T.prim_func(private=True, s_tir=True)
    def wkv7(var_r: T.handle, var_w: T.handle, var_k: T.handle, var_v: T.handle,
             var_a: T.handle, var_b: T.handle, s_in: T.Buffer((H, N, N), DTYPE),
             var_out: T.handle, s_out: T.Buffer((H, N, N), DTYPE)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        seq_len = T.int64()
        r = T.match_buffer(var_r, (seq_len, H, N), DTYPE)
        w = T.match_buffer(var_w, (seq_len, H, N), DTYPE)
        k = T.match_buffer(var_k, (seq_len, H, N), DTYPE)
        v = T.match_buffer(var_v, (seq_len, H, N), DTYPE)
        a = T.match_buffer(var_a, (seq_len, H, N), DTYPE)
        b = T.match_buffer(var_b, (seq_len, H, N), DTYPE)
        out = T.match_buffer(var_out, (seq_len, H, N), DTYPE)
        if seq_len < CPU_LONG_SEQ:
            for task in T.parallel(T.int64(H * n_blocks)):
                with T.sblock("wkv_rows"):
                    vh = T.axis.spatial(H, task // n_blocks)
                    vc = T.axis.spatial(n_blocks, task % n_blocks)
                    T.reads(r[0:seq_len, vh, 0:N], w[0:seq_len, vh, 0:N], k[0:seq_len, vh, 0:N],
                            v[0:seq_len, vh, vc * L:vc * L + L], a[0:seq_len, vh, 0:N],
                            b[0:seq_len, vh, 0:N], s_in[vh, vc * L:vc * L + L, 0:N])
                    T.writes(out[0:seq_len, vh, vc * L:vc * L + L], s_out[vh, vc * L:vc * L + L, 0:N])
                    rows_scan(r, w, k, v, a, b, s_in, s_out, out, (vh,), vh, vc * L, L,
                              T.int64(0), seq_len - 1)
        else:
            for task in T.parallel(T.int64(H)):
                with T.sblock("wkv_long"):
                    vh = T.axis.spatial(H, task)
                    T.reads(r[0:seq_len, vh, 0:N], w[0:seq_len, vh, 0:N], k[0:seq_len, vh, 0:N],
                            v[0:seq_len, vh, 0:N], a[0:seq_len, vh, 0:N], b[0:seq_len, vh, 0:N],
                            s_in[vh, 0:N, 0:N])
                    T.writes(out[0:seq_len, vh, 0:N], s_out[vh, 0:N, 0:N])
                    long_scan(r, w, k, v, a, b, s_in, s_out, out, (vh,), vh, T.int64(0), seq_len - 1)

    return wkv7


def _wkv7_ragged_cpu(H: int, N: int):
    """``wkv7_ragged`` for llvm: a serial count of the long sequences, then up to two parallel
    loops: (sequence, head, block of L rows) tasks for the short sequences, (sequence, head)
    tasks for the long ones; each task skips the sequences of the other kind."""
    L = _cpu_lanes(N)
    n_blocks = N // L
    rows_scan = _cpu_rows_scan(N, L)
    long_scan = _cpu_transposed_scan(N)

    @T.prim_func(private=True, s_tir=True)
    def wkv7_ragged(var_r: T.handle, var_w: T.handle, var_k: T.handle, var_v: T.handle,
                    var_a: T.handle, var_b: T.handle, var_s_in: T.handle, var_seg_last: T.handle,
                    var_out: T.handle, var_s_out: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        total_len = T.int64()
        batch = T.int64()
        r = T.match_buffer(var_r, (total_len, H, N), DTYPE)
        w = T.match_buffer(var_w, (total_len, H, N), DTYPE)
        k = T.match_buffer(var_k, (total_len, H, N), DTYPE)
        v = T.match_buffer(var_v, (total_len, H, N), DTYPE)
        a = T.match_buffer(var_a, (total_len, H, N), DTYPE)
        b = T.match_buffer(var_b, (total_len, H, N), DTYPE)
        s_in = T.match_buffer(var_s_in, (batch, H, N, N), DTYPE)
        seg_last = T.match_buffer(var_seg_last, (batch,), "int32")
        out = T.match_buffer(var_out, (total_len, H, N), DTYPE)
        s_out = T.match_buffer(var_s_out, (batch, H, N, N), DTYPE)
        n_long = T.int64(0)  # plain assignment: a mutable local scalar (TVMScript 0.27)
        for sb in range(batch):
            seq_start = T.Bind(T.if_then_else(
                sb == 0, T.int64(0), T.Cast("int64", seg_last[T.max(sb - 1, 0)]) + 1))
            if T.Cast("int64", seg_last[sb]) + 1 - seq_start >= CPU_LONG_SEQ:
                n_long = n_long + 1
        if n_long < batch:
            for task in T.parallel(batch * (H * n_blocks)):
                with T.sblock("wkv_rows"):
                    vb = T.axis.spatial(batch, task // (H * n_blocks))
                    vh = T.axis.spatial(H, task // n_blocks % H)
                    vc = T.axis.spatial(n_blocks, task % n_blocks)
                    # the token range is data-dependent, so the regions are spelled out
                    T.reads(r[0:total_len, vh, 0:N], w[0:total_len, vh, 0:N],
                            k[0:total_len, vh, 0:N], v[0:total_len, vh, vc * L:vc * L + L],
                            a[0:total_len, vh, 0:N], b[0:total_len, vh, 0:N],
                            s_in[vb, vh, vc * L:vc * L + L, 0:N], seg_last[0:batch])
                    T.writes(out[0:total_len, vh, vc * L:vc * L + L],
                             s_out[vb, vh, vc * L:vc * L + L, 0:N])
                    first = T.Bind(T.if_then_else(
                        vb == 0, T.int64(0), T.Cast("int64", seg_last[T.max(vb - 1, 0)]) + 1))
                    last = T.Bind(T.Cast("int64", seg_last[vb]))
                    if last + 1 - first < CPU_LONG_SEQ:
                        rows_scan(r, w, k, v, a, b, s_in, s_out, out, (vb, vh), vh, vc * L, L,
                                  first, last)
        if n_long > 0:
            for task in T.parallel(batch * H):
                with T.sblock("wkv_long"):
                    vb = T.axis.spatial(batch, task // H)
                    vh = T.axis.spatial(H, task % H)
                    T.reads(r[0:total_len, vh, 0:N], w[0:total_len, vh, 0:N],
                            k[0:total_len, vh, 0:N], v[0:total_len, vh, 0:N],
                            a[0:total_len, vh, 0:N], b[0:total_len, vh, 0:N],
                            s_in[vb, vh, 0:N, 0:N], seg_last[0:batch])
                    T.writes(out[0:total_len, vh, 0:N], s_out[vb, vh, 0:N, 0:N])
                    first = T.Bind(T.if_then_else(
                        vb == 0, T.int64(0), T.Cast("int64", seg_last[T.max(vb - 1, 0)]) + 1))
                    last = T.Bind(T.Cast("int64", seg_last[vb]))
                    if last + 1 - first >= CPU_LONG_SEQ:
                        long_scan(r, w, k, v, a, b, s_in, s_out, out, (vb, vh), vh, first, last)

    return wkv7_ragged
