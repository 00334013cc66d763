"""RWKV-7 WKV scan, the "gpu" form: one thread per value row, key-side vectors in shared memory."""

import math

from tvm.script import tirx as T

DTYPE = "float32"
# Independent partial sums per reduction (sa, out) in the GPU form: one block per head leaves
# few warps per SM to hide latency, and a single chain of N dependent FMAs per reduction would
# make each token wait for 2 N FMA latencies (nvcc does not reassociate float sums)
GPU_PARTIAL_SUMS = 4
# The five key-side vectors staged per token, in this order, in the GPU form's shared array
KEY_VECTORS = ("r", "w", "k", "a", "b")


# ---------------------------------------------------------------------------------------------
# "gpu": one thread per value row (h, i), the row in registers, key-side vectors in shared memory


def _gpu_scan(N: int, threads: bool):
    """Macro: thread i's scan of row S[.., h, i, :] over tokens first..last.

    The row sits in a "local" array; with the j loops unrolled its indices are constants, so
    GPU compilers keep it in registers. Per token, each thread loads element i of r, w, k, a, b
    (coalesced) and stores it into the block's shared array ``key``; after a barrier every
    thread reads all of ``key`` (the same address at once: a broadcast), so each key-side
    element leaves global memory once per block, not once per thread. The next token's
    elements (and v) are loaded into registers before this token's arithmetic, so the global
    load latency overlaps it; a second barrier keeps ``key`` from being overwritten while slow
    threads still read it.

    threads=False is the same body for serial loops on llvm: there the "thread" i stages all N
    elements itself (the ``stage`` loop), and the barriers are left out, since llvm has no
    lowering for tvm_storage_sync ("not implemented"; the "shared" array itself is a stack
    array there).
    ``state`` is the index prefix of this head's state: (h,) or (b, h).
    """
    n_stage = 1 if threads else N  # key-side elements one "thread" stages per token
    inner = T.unroll if threads else T.serial
    n_key = len(KEY_VECTORS)
    U = math.gcd(N, GPU_PARTIAL_SUMS)

    @T.macro
    def load(nxt, r, w, k, v, a, b, t, h, i):
        # next[q, e] <- element (i if threads else e) of key vector q; next[n_key, 0] <- v[t, h, i]
        for e in range(T.int64(n_stage)):
            nxt[0, e] = r[t, h, (i if threads else e)]
            nxt[1, e] = w[t, h, (i if threads else e)]
            nxt[2, e] = k[t, h, (i if threads else e)]
            nxt[3, e] = a[t, h, (i if threads else e)]
            nxt[4, e] = b[t, h, (i if threads else e)]
        nxt[n_key, 0] = v[t, h, i]

    @T.macro
    def scan(r, w, k, v, a, b, s_in, s_out, out, state, h, i, first, last):
        s = T.alloc_buffer((N,), DTYPE, scope="local")  # S[.., h, i, :]
        nxt = T.alloc_buffer((n_key + 1, n_stage), DTYPE, scope="local")
        key = T.alloc_buffer((n_key, N), DTYPE, scope="shared")  # r, w, k, a, b of token t
        part = T.alloc_buffer((2, U), DTYPE, scope="local")  # partial sums of sa, out
        for j in inner(T.int64(N)):
            s[j] = s_in[(*state, i, j)]
        load(nxt, r, w, k, v, a, b, first, h, i)
        for t in range(first, last + 1):
            if threads:
                T.tvm_storage_sync("shared")  # everyone is done reading token t - 1's key
            for e in range(T.int64(n_stage)):
                for q in T.unroll(T.int64(n_key)):
                    key[q, (i if threads else e)] = nxt[q, e]
            v_own = nxt[n_key, 0]  # a mutable local scalar: nxt is overwritten below
            if threads:
                T.tvm_storage_sync("shared")
            # prefetch token t + 1 (clamped: the last token loads itself again, unused)
            load(nxt, r, w, k, v, a, b, T.min(t + 1, last), h, i)
            for u in T.unroll(T.int64(U)):
                part[0, u] = T.float32(0)
                part[1, u] = T.float32(0)
            for jj in inner(T.int64(N // U)):
                for u in T.unroll(T.int64(U)):
                    part[0, u] = part[0, u] + s[jj * U + u] * key[3, jj * U + u]
            sa = part[0, 0]  # plain assignment: a mutable local scalar (TVMScript 0.27)
            for u in T.unroll(T.int64(U - 1)):
                sa = sa + part[0, u + 1]
            for jj in inner(T.int64(N // U)):
                for u in T.unroll(T.int64(U)):
                    s[jj * U + u] = (s[jj * U + u] * key[1, jj * U + u] + v_own * key[2, jj * U + u]
                                     + sa * key[4, jj * U + u])
                    part[1, u] = part[1, u] + s[jj * U + u] * key[0, jj * U + u]
            acc = part[1, 0]
            for u in T.unroll(T.int64(U - 1)):
                acc = acc + part[1, u + 1]
            out[t, h, i] = acc
        for j in inner(T.int64(N)):
            s_out[(*state, i, j)] = s[j]

    return scan


def _wkv7_gpu(H: int, N: int, threads: bool):
    """``wkv7`` for GPUs: blockIdx.x = h, threadIdx.x = value row i (ChatRWKV's CUDA layout).

    threads=False swaps the thread bindings for serial loops so the body can run on llvm.
    """
    scan = _gpu_scan(N, threads)

    @T.prim_func(private=True, s_tir=True)
    def wkv7(var_r: T.handle, var_w: T.handle, var_k: T.handle, var_v: T.handle,
             var_a: T.handle, var_b: T.handle, s_in: T.Buffer((H, N, N), DTYPE),
             var_out: T.handle, s_out: T.Buffer((H, N, N), DTYPE)):
        # tirx.is_scheduled makes dlight's ApplyDefaultSchedule leave this function alone
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        seq_len = T.int64()
        r = T.match_buffer(var_r, (seq_len, H, N), DTYPE)
        w = T.match_buffer(var_w, (seq_len, H, N), DTYPE)
        k = T.match_buffer(var_k, (seq_len, H, N), DTYPE)
        v = T.match_buffer(var_v, (seq_len, H, N), DTYPE)
        a = T.match_buffer(var_a, (seq_len, H, N), DTYPE)
        b = T.match_buffer(var_b, (seq_len, H, N), DTYPE)
        out = T.match_buffer(var_out, (seq_len, H, N), DTYPE)
        for h in (T.thread_binding(T.int64(H), thread="blockIdx.x") if threads
                  else T.serial(T.int64(H))):
            for i in (T.thread_binding(T.int64(N), thread="threadIdx.x") if threads
                      else T.serial(T.int64(N))):
                with T.sblock("wkv"):
                    vh, vi = T.axis.remap("SS", [h, i])
                    T.reads(r[0:seq_len, vh, 0:N], w[0:seq_len, vh, 0:N], k[0:seq_len, vh, 0:N],
                            v[0:seq_len, vh, vi], a[0:seq_len, vh, 0:N], b[0:seq_len, vh, 0:N],
                            s_in[vh, vi, 0:N])
                    T.writes(out[0:seq_len, vh, vi], s_out[vh, vi, 0:N])
                    scan(r, w, k, v, a, b, s_in, s_out, out, (vh,), vh, vi, T.int64(0), seq_len - 1)

    return wkv7


def _wkv7_ragged_gpu(H: int, N: int, threads: bool):
    """``wkv7_ragged`` for GPUs: blockIdx.x = b * H + h, threadIdx.x = value row i.

    Each block walks its own sequence's token range, the same for all of its threads, so the
    barriers inside the t loop are reached by the whole block.
    threads=False swaps the thread bindings for serial loops so the body can run on llvm.
    """
    scan = _gpu_scan(N, threads)

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
        for bh in (T.thread_binding(batch * H, thread="blockIdx.x") if threads
                   else T.serial(batch * H)):
            for i in (T.thread_binding(T.int64(N), thread="threadIdx.x") if threads
                      else T.serial(T.int64(N))):
                with T.sblock("wkv"):
                    vb = T.axis.spatial(batch, bh // H)
                    vh = T.axis.spatial(H, bh % H)
                    vi = T.axis.spatial(N, i)
                    # the token range is data-dependent, so the regions are spelled out
                    T.reads(r[0:total_len, vh, 0:N], w[0:total_len, vh, 0:N],
                            k[0:total_len, vh, 0:N], v[0:total_len, vh, vi],
                            a[0:total_len, vh, 0:N], b[0:total_len, vh, 0:N],
                            s_in[vb, vh, vi, 0:N], seg_last[0:batch])
                    T.writes(out[0:total_len, vh, vi], s_out[vb, vh, vi, 0:N])
                    # sequence b is tokens first..last; max() keeps the load in bounds for b == 0
                    first = T.Bind(T.if_then_else(
                        vb == 0, T.int64(0), T.Cast("int64", seg_last[T.max(vb - 1, 0)]) + 1))
                    last = T.Bind(T.Cast("int64", seg_last[vb]))
                    scan(r, w, k, v, a, b, s_in, s_out, out, (vb, vh), vh, vi, first, last)

    return wkv7_ragged
