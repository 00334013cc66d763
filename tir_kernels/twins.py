"""What the WKV5/6/7 factories and numpy twins share: the size check, and the ragged twin (the
single-sequence twin run on each packed sequence in turn)."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def check_sizes(H: int, N: int) -> None:
    """Static sizes must be positive Python ints (they shape TVMScript buffers)."""
    for name, size in (("H", H), ("N", N)):
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"{name} must be a positive Python int, got {size!r}")


def run_ragged(single: Callable, args: Sequence, per_token: Sequence[bool], s, seg_last):
    """``single(*args, s[b])`` on each packed sequence b, slicing the ``per_token`` arguments to
    its tokens: returns (out (T_total, H, N), s_new (B, H, N, N)), float32 like the kernels.

    ``seg_last`` (B,) is the packed index of each sequence's last token; sequence 0 starts at 0
    and every sequence must have at least one token."""
    seg_last = np.asarray(seg_last, np.int64)
    n_tokens = np.shape(args[0])[0]
    first = np.concatenate([[0], seg_last[:-1] + 1])
    if np.any(seg_last < first) or seg_last[-1] != n_tokens - 1:
        raise ValueError(f"seg_last {seg_last.tolist()} does not split {n_tokens} tokens into non-empty sequences")
    out = np.empty(np.shape(args[0]), np.float32)
    s_new = np.empty(np.shape(s), np.float32)
    for b, (lo, hi) in enumerate(zip(first, seg_last + 1)):
        seq = [a[lo:hi] if tok else a for a, tok in zip(args, per_token)]
        out[lo:hi], s_new[b] = single(*seq, s[b])
    return out, s_new
