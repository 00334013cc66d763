"""RWKV-6 ("Finch", x060) WKV scan: hand-written TIR kernels and their numpy twins.

The math follows the ``rwkv`` pip package's ``att_seq_v6_0``. Per head h the state S[h, i, j]
is an N x N matrix, i the KEY channel and j the VALUE channel (the package's own CPU layout,
and RWKV-5's); everything is float32. For each token t:

    out[t, h, j]   = sum_i r[t, h, i] * (u[h, i] * k[t, h, i] * v[t, h, j] + S[h, i, j])
    S[h, i, j]    <- w[t, h, i] * S[h, i, j] + k[t, h, i] * v[t, h, j]

The output reads the state *before* the update plus the bonus ``u`` (``time_faaaa``, raw);
``w`` is the per-token decay exp(-exp(d_t)) in (0, 1), acting on the key axis. It is RWKV-5's
scan with the decay moved from (H, N) to (T, H, N). Columns (h, j) never interact, so they are
the parallel axes; t is serial.

Factories take the static sizes H (heads) and N (head size) and return a ``tvm.tirx.PrimFunc``;
sequence lengths (and the ragged kernel's batch size) are symbolic int64 variables.

Forms (the ``target`` argument):
  "cpu"  hand-scheduled for llvm: tasks over (head, block of value channels) run in parallel,
         the value channels of a block are one vector, t and i are serial (``cpu.py``).
  "gpu"  hand-bound: one thread block per head (per sequence and head when ragged), one thread
         per value channel j holding the column S[h, :, j] in registers across t (``gpu.py``).
Single-sequence and ragged kernels share their scan bodies through ``T.macro``.
"""
import numpy as np

from ..twins import check_sizes, run_ragged
from .cpu import CPU_LANES, _wkv6_cpu, _wkv6_ragged_cpu  # noqa: F401  (tests read CPU_LANES)
from .gpu import _wkv6_gpu, _wkv6_ragged_gpu

WKV6_TARGETS = ("cpu", "gpu")


def wkv6(H: int, N: int, target: str = "cpu"):
    """Single-sequence WKV6 scan, a PrimFunc with params (r, k, v, w, u, s_in, out, s_out).

    r, k, v, w, out: (T, H, N) with T symbolic; u: (H, N); s_in, s_out: (H, N, N) laid out
    [head, key, value]. s_in is only read. Needs T >= 1 (for T = 0 s_out is never written).
    """
    check_sizes(H, N)
    if target == "cpu":
        return _wkv6_cpu(H, N)
    if target == "gpu":
        return _wkv6_gpu(H, N, threads=True)
    raise ValueError(f"unknown wkv6 target {target!r}; choose one of {WKV6_TARGETS}")


def wkv6_ragged(H: int, N: int, target: str = "cpu"):
    """WKV6 scan over B sequences packed back to back on one token axis (batch prefill/decode).

    Params (r, k, v, w, u, s_in, seg_last, out, s_out): r, k, v, w, out: (T_total, H, N);
    u: (H, N); s_in, s_out: (B, H, N, N); seg_last: (B,) int32, the packed index of the last
    token of each sequence (inclusive), so sequence b spans seg_last[b-1]+1 .. seg_last[b] and
    sequence 0 starts at 0. Every sequence must have at least one token. B and T_total symbolic.
    """
    check_sizes(H, N)
    if target == "cpu":
        return _wkv6_ragged_cpu(H, N)
    if target == "gpu":
        return _wkv6_ragged_gpu(H, N, threads=True)
    raise ValueError(f"unknown wkv6_ragged target {target!r}; choose one of {WKV6_TARGETS}")


# ---------------------------------------------------------------------------------------------
# numpy twins


def wkv6_numpy(r, k, v, w, u, s):
    """Numpy twin of ``wkv6``: (out (T, H, N), s_new (H, N, N)), computed in float64.

    s is [head, key i, value j]; returns float32 like the kernel."""
    r, k, v, w, u, s = (np.asarray(x, np.float64) for x in (r, k, v, w, u, s))
    out = np.empty_like(r)  # (T, H, N)
    for t in range(r.shape[0]):
        kv = k[t, :, :, None] * v[t, :, None, :]  # (H, N_i, N_j)
        out[t] = np.einsum("hi,hij->hj", r[t], u[:, :, None] * kv + s)  # the state before the update
        s = w[t, :, :, None] * s + kv
    return out.astype(np.float32), s.astype(np.float32)


def wkv6_ragged_numpy(r, k, v, w, u, s, seg_last):
    """Numpy twin of ``wkv6_ragged``: ``wkv6_numpy`` on each packed sequence in turn."""
    return run_ragged(wkv6_numpy, (r, k, v, w, u), (True, True, True, True, False), s, seg_last)
