"""The channel-mix value product ``y = x @ W`` that reads only the rows of W it needs.

Every RWKV channel mix ends in ``V relu(K x)^2``: each zero of ``relu(K x)`` (about half of them
with random weights, most of them in trained models) multiplies a whole column of the checkpoint's
``ffn.value`` (C, F), i.e. reads weights for nothing. Stored hidden-major, W = ``ffn.value.T``
(F, C), each hidden unit's weights are one contiguous row, and a kernel can skip the rows of the
zero entries: fewer bytes per decode step, the same result (only the summation order differs; the
skipped terms are exact zeros).

Layouts (``rwkv_relax.loaders.transforms.hidden_major`` makes W from the checkpoint):
  float  W (F, C) in the weight dtype;
  group-quantized  q (F, C * bits / 32) uint32 + scale (F, C / group): MLC's ``*_1`` packing
         applied to the (F, C) matrix, i.e. groups run along C within a row, so a row is
         self-contained (its codes and its scales).

Forms (``target``):
  "cpu"  hand-written llvm kernels (``cpu.py``, ``cpu_quant.py``): per token tile, a list of the
         nonzero hidden units, then accumulation over the listed rows only;
  "gpu"  the dense product as a TE function for dlight (its rules handle this layout: threads
         over the contiguous C axis read coalesced rows).
"""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from ..quant_matmul import dequantize_element
from ..quant_matmul.format import qmax
from .cpu import ffn_value_cpu
from .cpu_quant import ffn_value_q_cpu

FORMS = ("cpu", "gpu")


def _check(F: int, C: int, bits: int, group: int) -> None:
    if C % 32 or F % 4 or (bits and (bits not in (4, 8) or C % group or group % (32 // bits))):
        raise ValueError(f"unsupported ffn_value: F={F} C={C} bits={bits} group={group}")


def ffn_value(F: int, C: int, act_dtype: str, w_dtype: str, out_dtype: str, target: str = "cpu"
              ) -> tirx.PrimFunc:
    """PrimFunc ``(x (n, F) act_dtype, w (F, C) w_dtype, y (n, C) out_dtype)``, n symbolic."""
    _check(F, C, 0, 0)
    if target == "cpu":
        return ffn_value_cpu(F, C, act_dtype, w_dtype, out_dtype)
    if target == "gpu":
        n = tirx.Var("seq_len", "int64")
        x = te.placeholder((n, *_i64(F)), act_dtype, name="x")
        w = te.placeholder(_i64(F, C), w_dtype, name="w")
        f = te.reduce_axis((0, _i64(F)[0]), name="f")
        y = te.compute((n, *_i64(C)), lambda t, c: te.sum(
            x[t, f].astype("float32") * w[f, c].astype("float32"), axis=f), name="y")
        return _private(te.create_prim_func([x, w, _cast(y, out_dtype)]))
    raise ValueError(f"unknown ffn_value target {target!r}; choose one of {FORMS}")


def ffn_value_q(F: int, C: int, bits: int, group: int, act_dtype: str, out_dtype: str, target: str = "cpu"
                ) -> tirx.PrimFunc:
    """PrimFunc ``(x (n, F), q (F, C*bits/32) uint32, scale (F, C/group), y (n, C))``, n symbolic."""
    _check(F, C, bits, group)
    if target == "cpu":
        return ffn_value_q_cpu(F, C, bits, group, act_dtype, out_dtype)
    if target == "gpu":
        n = tirx.Var("seq_len", "int64")
        x = te.placeholder((n, *_i64(F)), act_dtype, name="x")
        q = te.placeholder(_i64(F, C * bits // 32), "uint32", name="q")
        scale = te.placeholder(_i64(F, C // group), act_dtype, name="scale")
        f = te.reduce_axis((0, _i64(F)[0]), name="f")
        y = te.compute((n, *_i64(C)), lambda t, c: te.sum(
            x[t, f].astype("float32") * dequantize_element(q, scale, f, c, bits, group), axis=f), name="y")
        return _private(te.create_prim_func([x, q, scale, _cast(y, out_dtype)]))
    raise ValueError(f"unknown ffn_value target {target!r}; choose one of {FORMS}")


def _i64(*dims):  # Relax shapes are int64; FuseTIR refuses to merge int32-shaped buffers
    return tuple(tirx.IntImm("int64", d) for d in dims)


def _cast(y: te.Tensor, dtype: str) -> te.Tensor:
    return y if dtype == "float32" else te.compute(y.shape, lambda t, c: y[t, c].astype(dtype), name="y_cast")


def _private(func: tirx.PrimFunc) -> tirx.PrimFunc:
    # opaque: FuseOps must not merge it with its neighbours (FuseTIR cannot unify this function's
    # own symbolic token count with theirs); dlight schedules it alone
    return func.with_attr("tirx.noalias", True).with_attr("op_pattern", 8).without_attr("global_symbol")


# ---------------------------------------------------------------------------------------------
# numpy twins (float64)


def ffn_value_numpy(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w`` over the rows of nonzero x only (the dense product, by construction)."""
    x = x.astype(np.float64)
    y = np.zeros((x.shape[0], w.shape[1]))
    for t in range(x.shape[0]):
        nz = np.flatnonzero(x[t])
        y[t] = x[t, nz] @ w[nz].astype(np.float64)
    return y


def dequantize_rows(q: np.ndarray, scale: np.ndarray, bits: int, group: int) -> np.ndarray:
    """(q, scale) -> W (F, C) float64, code by code."""
    per_word = 32 // bits
    codes = np.empty((q.shape[0], q.shape[1] * per_word), np.int64)
    for j in range(per_word):
        codes[:, j::per_word] = (q.astype(np.int64) >> (bits * j)) & (2 ** bits - 1)
    return (codes - qmax(bits)).astype(np.float64) * np.repeat(scale.astype(np.float64), group, axis=1)


def ffn_value_q_numpy(x: np.ndarray, q: np.ndarray, scale: np.ndarray, bits: int, group: int) -> np.ndarray:
    return ffn_value_numpy(x, dequantize_rows(q, scale, bits, group))
