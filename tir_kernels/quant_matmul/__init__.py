"""Group-quantized matmul ``y = x @ dequantize(q, scale).T``: TIR kernels and a numpy twin.

The weight layout is MLC-LLM's ``*_1`` scheme (see ``rwkv_relax.quantization.group_quant``):
q (N, K * bits / 32) uint32 holds ``32 // bits`` unsigned codes per word, element k in bits
``(k % per_word) * bits`` of word ``k // per_word``; scale (N, K / group) in the activation dtype;
``w[n, k] = (code - qmax) * scale[n, k // group]`` with ``qmax = 2**(bits - 1) - 1``.

Two implementations:
  :func:`q_matmul_te`  the dequantization as a TE stage inlined into a fp32-accumulating matmul,
         for any number of rows (tokens). Unscheduled: dlight's GEMV/matmul rules schedule it on
         GPUs, rwkv_relax's CPU matmul rule on llvm (prefill, batches).
  :func:`q_gemv`  one row (decode), a tagged kernel with three forms (the ``target`` argument):
         "cpu" a hand-written llvm GEMV, exact fp32 products (any llvm target);
         "avx2" for fp16 activations on x86 with AVX2, the same GEMV on int16 dot products (see
         :func:`_q_gemv_avx2_i16`; fp32 activations and K not a multiple of 64 codes per 8 words
         get the "cpu" form);
         "gpu" the TE function for dlight's GEMV rule;
         "int8_vnni" / "int8_avx2" (opt-in, ``build --cpu-int8-activations``): activations
         quantized per group to int8, as ggml does (see :func:`_q_gemv_i8`; K not a multiple of
         8 words gets the "cpu" form).

Why a hand-written decode GEMV: dequantizing element by element (shift by ``(k % 8) * 4``, mask,
convert, subtract qmax, multiply by the scale, FMA) costs ~6 vector ops per 8 weights and leaves
a 4-bit GEMV compute-bound at ~1/4 of memory bandwidth. The kernel below instead

* puts one *word* in each SIMD lane (8 consecutive uint32 = 64 4-bit weights per vector load) and
  visits the ``per_word`` codes of every lane with a constant mask: ``word & (mask << bits*j)`` is
  ``code * 2**(bits*j)``, exactly representable in fp32 (a 4/8-bit integer times a power of two,
  below 2**31 so the int32 conversion is exact too) -- so each code costs one AND, one
  int->float conversion and one FMA. The top code of a word is shifted down instead (as int32 it
  would be negative);
* folds ``2**-(bits*j)`` and the lane permutation into a per-call copy of x:
  ``xp[kb, j, lane] = x[(kb*L + lane)*per_word + j] * 2**-(bits*j)`` (K floats, L1-resident);
* folds ``- qmax`` into the accumulator's start value: ``sum_j (c_j - qmax) x_j =
  sum_j c_j x_j - qmax * sum_j x_j``, with ``xc[kb, lane] = -qmax * sum_j x_j`` precomputed;
* applies the scale once per word (per lane) instead of once per weight;
* computes 4 weight rows per tile (independent FMA chains, xp loads shared) on all cores, and
  prefetches the rows four tiles ahead into L2.
Accumulation is fp32 throughout, like the "te" form; only the summation order differs. The llvm forms
live in ``cpu.py``; this module holds the factory, the numpy twins and the TE functions.
"""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from .cpu import I8_MAX, ROWS, TASKS, _q_gemv_avx2_i16, _q_gemv_cpu, _q_gemv_i8  # noqa: F401  (tests read ROWS, TASKS)
from .format import _check, qmax

Q_GEMV_TARGETS = ("cpu", "avx2", "gpu", "int8_vnni", "int8_avx2")


def q_gemv(n: int, k: int, bits: int, group: int, act_dtype: str, out_dtype: str,
           target: str = "cpu") -> tirx.PrimFunc:
    """PrimFunc ``(x (1, k) act_dtype, q, scale, y (1, n) out_dtype)``."""
    _check(n, k, bits, group)
    # every shape: the int16 preparation costs ~1 us at K = 768 and ~3 us at 2688, while the
    # int16 GEMV beat the "cpu" form on every RWKV-5 0.1B matrix, 768 x 768 included
    # (13.8 vs 17.0 us with weights from DRAM)
    fills_ymm = (k // (32 // bits)) % 8 == 0  # the integer forms take 8 words per vector
    if target == "avx2" and act_dtype == "float16" and fills_ymm:
        return _q_gemv_avx2_i16(n, k, bits, group, act_dtype, out_dtype)
    if target in ("int8_vnni", "int8_avx2") and fills_ymm:
        return _q_gemv_i8(n, k, bits, group, act_dtype, out_dtype, vnni=target == "int8_vnni")
    if target in ("cpu", "avx2", "int8_vnni", "int8_avx2"):
        return _q_gemv_cpu(n, k, bits, group, act_dtype, out_dtype)
    if target == "gpu":
        per_word = 32 // bits

        def i64(*dims):  # Relax shapes are int64; FuseTIR refuses to merge int32-shaped buffers
            return tuple(tirx.IntImm("int64", d) for d in dims)
        x = te.placeholder(i64(1, k), act_dtype, name="x")
        q = te.placeholder(i64(n, k // per_word), "uint32", name="q")
        scale = te.placeholder(i64(n, k // group), act_dtype, name="scale")
        y = q_matmul_te(x, q, scale, bits, group, out_dtype)
        func = te.create_prim_func([x, q, scale, y]).with_attr("tirx.noalias", True)
        return func.without_attr("global_symbol")  # private, like the "cpu" form
    raise ValueError(f"unknown q_gemv target {target!r}; choose one of {Q_GEMV_TARGETS}")


# ---------------------------------------------------------------------------------------------
# numpy twin


def q_matmul_numpy(x: np.ndarray, q: np.ndarray, scale: np.ndarray, bits: int, group: int) -> np.ndarray:
    """float64 ``x @ W.T`` with W unpacked from (q, scale) code by code."""
    per_word = 32 // bits
    n, words = q.shape
    codes = np.empty((n, words * per_word), np.int64)
    for j in range(per_word):
        codes[:, j::per_word] = (q.astype(np.int64) >> (bits * j)) & (2 ** bits - 1)
    w = (codes - qmax(bits)).astype(np.float64) * np.repeat(scale.astype(np.float64), group, axis=1)
    return x.astype(np.float64) @ w.T


def quantize_activations(x: np.ndarray, group: int, top: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """x (1, K) -> (integer codes (K,), per-group scales (K/group,)) as the integer forms do:
    ``scale = max|x_g| / top`` (1 for an all-zero group), codes rounded half to even."""
    xg = x.astype(np.float32).reshape(-1, group)
    amax = np.abs(xg).max(axis=1)
    safe = np.where(amax > 0, amax, np.float32(top))  # an all-zero group: scale 1
    scale = (safe / np.float32(top)).astype(np.float32)
    inv = (np.float32(top) / safe).astype(np.float32)
    codes = np.rint(xg * inv[:, None]).astype(dtype)
    return codes.reshape(-1), scale


def quantize_activations_i16(x: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """The "avx2" form's int16 activations (``top`` 32767)."""
    return quantize_activations(x, group, 32767, np.int16)


def quantize_activations_i8(x: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """The "int8_*" forms' int8 activations (``top`` 127, as ggml's Q8_0)."""
    return quantize_activations(x, group, I8_MAX, np.int8)


def q_gemv_i16_numpy(x: np.ndarray, q: np.ndarray, scale: np.ndarray, bits: int, group: int) -> np.ndarray:
    """Twin of the "avx2" form: activations quantized per group to int16, exact integer dot
    products per group, float64 scaling."""
    codes, xs = quantize_activations_i16(x, group)
    xi = codes.astype(np.float64) * np.repeat(xs.astype(np.float64), group)
    return q_matmul_numpy(xi[None, :], q, scale, bits, group)


def q_gemv_i8_numpy(x: np.ndarray, q: np.ndarray, scale: np.ndarray, bits: int, group: int) -> np.ndarray:
    """Twin of the "int8_*" forms: activations quantized per group to int8, exact integer dot
    products per group, float64 scaling."""
    codes, xs = quantize_activations_i8(x, group)
    xi = codes.astype(np.float64) * np.repeat(xs.astype(np.float64), group)
    return q_matmul_numpy(xi[None, :], q, scale, bits, group)


# ---------------------------------------------------------------------------------------------
# "te": dequantize stage + matmul, for any scheduler


def dequantize_element(q: te.Tensor, scale: te.Tensor, row, col, bits: int, group: int):
    """fp32 expression for W[row, col]."""
    per_word = 32 // bits
    code = (q[row, col // per_word] >> ((col % per_word) * bits).astype("uint32")) & tirx.const(
        2 ** bits - 1, "uint32")
    return (code.astype("float32") - float(qmax(bits))) * scale[row, col // group].astype("float32")


def te_dequantize(q: te.Tensor, scale: te.Tensor, bits: int, group: int, out_dtype: str) -> te.Tensor:
    """(q, scale) -> W (N, K) in ``out_dtype``, element by element (inlined by its consumer)."""
    return te.compute((q.shape[0], q.shape[1] * (32 // bits)),
                      lambda i, c: dequantize_element(q, scale, i, c, bits, group).astype(out_dtype),
                      name="dequantize")


def q_matmul_te(x: te.Tensor, q: te.Tensor, scale: te.Tensor, bits: int, group: int,
                out_dtype: str) -> te.Tensor:
    """``x (m, k) @ dequantize(q, scale).T`` accumulated in fp32, cast to ``out_dtype``."""
    n, k = q.shape[0], x.shape[1]
    w = te_dequantize(q, scale, bits, group, "float32")
    r = te.reduce_axis((0, k), name="k")
    acc = te.compute((x.shape[0], n), lambda t, i: te.sum(x[t, r].astype("float32") * w[i, r], axis=r),
                     name="matmul")
    if out_dtype == "float32":
        return acc
    return te.compute(acc.shape, lambda t, i: acc[t, i].astype(out_dtype), name="cast")
