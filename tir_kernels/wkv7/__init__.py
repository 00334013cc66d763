"""RWKV-7 ("x070") WKV scan: hand-written TIR kernels and their numpy twins.

The math follows the ``rwkv`` pip package's ``RWKV_x070`` (and ggml). Per head h the state
S[h, i, j] is an N x N matrix, i the VALUE channel (row) and j the KEY channel (column), the
layout [H, V, K]; everything is float32. For each token t:

    sa[i]          = sum_j S[h, i, j] * a[t, h, j]                            (old state)
    S[h, i, j]    <- S[h, i, j] * w[t, h, j] + v[t, h, i] * k[t, h, j] + sa[i] * b[t, h, j]
    out[t, h, i]   = sum_j S[h, i, j] * r[t, h, j]                            (new state)

``w`` is the per-token decay itself, in (0.545, 1); ``a = -kappa_hat`` and
``b = kappa_hat * a_rate`` (kappa_hat the per-head L2-normalised key). Rows (h, i) never
interact: each row needs only its own old values and the token's key-side vectors r, w, k, a, b.
t is serial.

Factories take the static sizes H (heads) and N (head size) and return a ``tvm.tirx.PrimFunc``;
sequence lengths (and the ragged kernel's batch size) are symbolic int64 variables.

Forms (the ``target`` argument):
  "cpu"  hand-scheduled for llvm, two paths chosen per sequence at run time (see
         :func:`_wkv7_cpu`): short sequences (decode) scan value rows with the contiguous key
         axis as the vector and horizontal sums; sequences of ``CPU_LONG_SEQ`` or more tokens
         transpose the head's state into a stack array and vectorise over value rows.
  "gpu"  hand-bound: one thread block per head (per sequence and head when ragged), one thread
         per value row i holding S[h, i, :] in registers across t; the token's r, w, k, a, b
         staged in shared memory once per block (see :func:`_gpu_scan`).
Single-sequence and ragged kernels share their scan bodies through ``T.macro``. The forms live in
``cpu.py`` and ``gpu.py``; this module holds the factories and the numpy twins.
"""
import numpy as np

from ..twins import check_sizes, run_ragged
from .cpu import CPU_LANES, CPU_LONG_SEQ, _wkv7_cpu, _wkv7_ragged_cpu  # noqa: F401  (tests read them)
from .gpu import _wkv7_gpu, _wkv7_ragged_gpu

WKV7_TARGETS = ("cpu", "gpu")
WKV7_RAGGED_TARGETS = ("cpu", "gpu")


def wkv7(H: int, N: int, target: str = "cpu"):
    """Single-sequence WKV7 scan, a PrimFunc with params (r, w, k, v, a, b, s_in, out, s_out).

    r, w, k, v, a, b, out: (T, H, N) with T symbolic; s_in, s_out: (H, N, N) laid out
    [head, value, key]. s_in is only read. Needs T >= 1 (for T = 0 s_out is never written).
    """
    check_sizes(H, N)
    if target == "cpu":
        return _wkv7_cpu(H, N)
    if target == "gpu":
        return _wkv7_gpu(H, N, threads=True)
    raise ValueError(f"unknown wkv7 target {target!r}; choose one of {WKV7_TARGETS}")


def wkv7_ragged(H: int, N: int, target: str = "cpu"):
    """WKV7 scan over B sequences packed back to back on one token axis (batch prefill/decode).

    Params (r, w, k, v, a, b, s_in, seg_last, out, s_out): r, w, k, v, a, b, out:
    (T_total, H, N); s_in, s_out: (B, H, N, N); seg_last: (B,) int32, the packed index of the
    last token of each sequence (inclusive), so sequence b spans seg_last[b-1]+1 .. seg_last[b]
    and sequence 0 starts at 0. Every sequence must have at least one token. B and T_total
    symbolic.
    """
    check_sizes(H, N)
    if target == "cpu":
        return _wkv7_ragged_cpu(H, N)
    if target == "gpu":
        return _wkv7_ragged_gpu(H, N, threads=True)
    raise ValueError(f"unknown wkv7_ragged target {target!r}; choose one of {WKV7_RAGGED_TARGETS}")


# ---------------------------------------------------------------------------------------------
# numpy twins


def wkv7_numpy(r, w, k, v, a, b, s):
    """Numpy twin of ``wkv7``: (out (T, H, N), s_new (H, N, N)), computed in float64.

    s is [head, value i, key j]; returns float32 like the kernel."""
    r, w, k, v, a, b, s = (np.asarray(x, np.float64) for x in (r, w, k, v, a, b, s))
    out = np.empty_like(r)  # (T, H, N)
    for t in range(r.shape[0]):
        sa = np.einsum("hij,hj->hi", s, a[t])  # on the old state
        s = (s * w[t][:, None, :] + v[t][:, :, None] * k[t][:, None, :]
             + sa[:, :, None] * b[t][:, None, :])
        out[t] = np.einsum("hij,hj->hi", s, r[t])  # on the new state
    return out.astype(np.float32), s.astype(np.float32)


def wkv7_ragged_numpy(r, w, k, v, a, b, s, seg_last):
    """Numpy twin of ``wkv7_ragged``: ``wkv7_numpy`` on each packed sequence in turn."""
    return run_ragged(wkv7_numpy, (r, w, k, v, a, b), (True,) * 6, s, seg_last)
