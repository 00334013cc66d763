"""Symmetric group quantization along the input dimension (MLC-LLM's ``*_1`` scheme).

A weight W (N, K) is cut into groups of G = 32 consecutive input channels. Per group
``scale = max|w| / qmax`` with ``qmax = 2**(bits-1) - 1`` and ``q = clip(round(w / scale) + qmax,
0, 2*qmax)``, stored unsigned; ``w ~= (q - qmax) * scale``. ``32 // bits`` codes are packed into each
uint32, element k in bits ``(k % per_word) * bits`` of word ``k // per_word``. Scales are stored in
the activation dtype: q_weight (N, K*bits/32) uint32, q_scale (N, K/G). Numpy only (the
runtime converts checkpoints with it); the TE dequantization lives with the kernels.
"""
from __future__ import annotations

import numpy as np


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def packed_shapes(n: int, k: int, bits: int, group: int) -> tuple[tuple[int, int], tuple[int, int]]:
    return (n, k * bits // 32), (n, k // group)


def quantize(w: np.ndarray, bits: int, group: int, scale_dtype: str,
             rows_per_chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """W (N, K) float -> (q_weight uint32 (N, K*bits/32), q_scale (N, K/group)).

    Works on blocks of rows so that temporaries stay a small fraction of the tensor (conversion
    of a 65536-row head must not hold several fp32 copies of it)."""
    n, k = w.shape
    q_shape, s_shape = packed_shapes(n, k, bits, group)
    q_out, s_out = np.empty(q_shape, np.uint32), np.empty(s_shape, scale_dtype)
    per_word = 32 // bits
    shifts = np.arange(per_word, dtype=np.uint32) * bits
    for lo in range(0, n, rows_per_chunk):
        g = w[lo:lo + rows_per_chunk].astype(np.float32).reshape(-1, k // group, group)
        scale = (np.abs(g).max(axis=2) / qmax(bits)).astype(scale_dtype)
        s32 = scale.astype(np.float32)[..., None]
        safe = np.where(s32 == 0, 1.0, s32)  # an all-zero group quantizes to qmax, i.e. exactly 0
        codes = np.clip(np.rint(g / safe) + qmax(bits), 0, 2 * qmax(bits)).astype(np.uint32)
        words = codes.reshape(-1, k // per_word, per_word) << shifts
        q_out[lo:lo + rows_per_chunk] = np.bitwise_or.reduce(words, axis=2)
        s_out[lo:lo + rows_per_chunk] = scale
    return q_out, s_out


def dequantize(q: np.ndarray, scale: np.ndarray, bits: int, group: int) -> np.ndarray:
    """Numpy twin of the TE dequantization: (q_weight, q_scale) -> W (N, K) float32."""
    n = q.shape[0]
    per_word = 32 // bits
    codes = (q[..., None] >> (np.arange(per_word, dtype=np.uint32) * bits)) & np.uint32(2 ** bits - 1)
    codes = codes.reshape(n, -1).astype(np.float32) - qmax(bits)
    k = codes.shape[1]
    return (codes.reshape(n, k // group, group) * scale.astype(np.float32)[..., None]).reshape(n, k)
