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
Single-sequence and ragged kernels share their scan bodies through ``T.macro``. The hand-scheduled
forms live in ``cpu.py`` and ``gpu.py``; this module holds the factories, the schedulable form and
the numpy twins.
"""

import numpy as np
from tvm.script import tirx as T

from ..twins import run_ragged
from .cpu import CPU_LANES, _wkv5_cpu, _wkv5_ragged_cpu  # noqa: F401
from .gpu import _wkv5_gpu, _wkv5_ragged_gpu

DTYPE = "float32"
WKV5_TARGETS = ("schedulable", "cpu", "gpu")
WKV5_RAGGED_TARGETS = ("cpu", "gpu")


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
    return run_ragged(wkv5_numpy, (r, k, v, w, u), (True, True, True, False, False), s, seg_last)
