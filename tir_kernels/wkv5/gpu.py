"""RWKV-5 WKV scan, the "gpu" form: one thread per column (h, j), the column in registers."""

from tvm.script import tirx as T

DTYPE = "float32"


# ---------------------------------------------------------------------------------------------
# "gpu": one thread per column (h, j), the column in registers


def _gpu_scan(N: int, threads: bool, decay_per_token: bool = False):
    """Macro: one thread's scan of column S[.., h, :, j] over tokens first..last.
    ``decay_per_token``: w is (T, H, N), RWKV-6's data-dependent decay, instead of (H, N).

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
                acc = acc + r[t, h, i] * (u[h, i] * kv + s[i])  # the state before the token
                if decay_per_token:  # resolved when the macro is parsed
                    s[i] = w[t, h, i] * s[i] + kv
                else:
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
