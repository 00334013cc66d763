"""exp, sigmoid, tanh and silu for llvm as plain fp32 arithmetic that vectorises.

TVM lowers ``exp`` to ``llvm.exp``, which LLVM turns into one scalar libm ``expf`` call per element
when vectorised (no vector math library is linked). The RWKV-6/7 LoRAs and the RWKV-4/5/6 gates
end in these functions, so their prefill kernels ran at a fraction of the matmul rate. Here
``exp`` is the Cephes single-precision scheme: ``x = n ln2 + r`` with ln2 split in two
(Cody-Waite, so ``r`` is exact), a degree-7 polynomial for ``e^r`` on |r| <= ln2/2, and ``2^n``
built from exponent bits: at most 1 ulp from the correctly rounded value for every normal
result (``exp_numpy`` is its twin); sigmoid and silu are within 2.5 ulp, tanh 4.5. inf, -inf and
NaN behave as IEEE says; results below FLT_MIN flush to zero. fp16 inputs are computed in fp32.

Measured with the GEMM epilogue vectorised per task (``matmul.py``), interleaved whole-model
A/B, 12x768 vocab 65536, 512-token prefill: RWKV-7 q0f32 +7.5%, RWKV-5 q4f16_1 +9%; the RWKV-7
decay kernel, exp(sigmoid(LoRA)), 32.9 -> 16.1 ms per prefill.

``legalize_map`` replaces the default legalization of these ops in ``cpu_pipeline``; other dtypes
keep it.
"""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

LOG2E = 1.44269504088896341
LN2_HI = 0.693359375  # ln2 = LN2_HI + LN2_LO; LN2_HI has 9 significant bits, so n * LN2_HI is exact
LN2_LO = -2.12194440e-4
POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
X_MAX = 88.72283905206835  # log(FLT_MAX): above, inf
X_MIN = -87.33654475055310  # log(FLT_MIN): below, 0 (subnormal results flush to zero)
TANH_SERIES_BELOW = 0.25
TANH_SERIES = (-1 / 3, 2 / 15, -17 / 315, 62 / 2835, -1382 / 155925)  # x^3 .. x^11


def _bound(x: tirx.PrimExpr, body_fn) -> tirx.PrimExpr:
    """``body_fn(v)`` with a fresh v bound to ``x``. The formulas use their argument many times;
    unbound, an inlined producer is copied into each use, and nesting (exp of a sigmoid)
    multiplies the copies: 4.8 against 2.7 ns per element, 10x the compile time. (compute_inline
    may copy a Let into two places; ``cpu_pipeline`` renames such variables with ConvertSSA.)"""
    v = tirx.Var("x", "float32")
    return tirx.Let(v, x, body_fn(v))


def exp_f32(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """e^x for an fp32 expression."""
    return _bound(x, _exp)


def _exp(x):
    f = "float32"
    xc = tirx.max(tirx.min(x, tirx.const(X_MAX, f)), tirx.const(X_MIN, f))
    n = tirx.floor(xc * tirx.const(LOG2E, f) + tirx.const(0.5, f))
    r = (xc - n * tirx.const(LN2_HI, f)) - n * tirx.const(LN2_LO, f)
    p = tirx.const(POLY[0], f)
    for c in POLY[1:]:
        p = p * r + tirx.const(c, f)
    y = p * r * r + r + tirx.const(1.0, f)
    # 2^n as 2^h * 2^(n-h), h = n // 2: both factors are normal numbers for n in [-126, 128]
    ni = tirx.Cast("int32", n)
    h = tirx.shift_right(ni, tirx.const(1, "int32"))

    def pow2(e):
        return tirx.reinterpret(f, tirx.shift_left(e + tirx.const(127, "int32"), tirx.const(23, "int32")))

    out = y * pow2(h) * pow2(ni - h)
    out = tirx.Select(x > tirx.const(X_MAX, f), tirx.const(float("inf"), f), out)
    out = tirx.Select(x < tirx.const(X_MIN, f), tirx.const(0.0, f), out)
    return tirx.Select(tirx.isnan(x), x, out)  # the clamps above would turn NaN into a number


def exp_numpy(x: np.ndarray) -> np.ndarray:
    """Twin of ``exp_f32``, step for step in fp32."""
    f = np.float32
    x = np.asarray(x, f)
    xc = np.clip(x, f(X_MIN), f(X_MAX))
    n = np.floor(xc * f(LOG2E) + f(0.5)).astype(f)
    r = (xc - n * f(LN2_HI)) - n * f(LN2_LO)
    p = np.full_like(r, f(POLY[0]))
    for c in POLY[1:]:
        p = p * r + f(c)
    y = p * r * r + r + f(1.0)
    ni = np.nan_to_num(n).astype(np.int32)
    h = ni >> 1

    def pow2(e):
        return ((e + 127).astype(np.int32) << 23).view(f)

    with np.errstate(over="ignore"):  # x just under X_MAX: y * 2^n may round up to inf, as in fp32
        out = y * pow2(h) * pow2(ni - h)
    out = np.where(x > f(X_MAX), f(np.inf), out)
    out = np.where(x < f(X_MIN), f(0.0), out)
    return np.where(np.isnan(x), x, out).astype(f)


def sigmoid_f32(x):
    return tirx.const(1.0, "float32") / (tirx.const(1.0, "float32") + exp_f32(-x))


def tanh_f32(x):
    """1 - 2 / (e^(2|x|) + 1) with x's sign (no overflow); below |x| = TANH_SERIES_BELOW, where
    that difference loses relative precision, the odd series to x^11 (next term < 3e-10 relative)."""
    return _bound(x, _tanh)


def _tanh(x):
    f = "float32"
    ax = tirx.abs(x)
    t = tirx.const(1.0, f) - tirx.const(2.0, f) / (exp_f32(ax * tirx.const(2.0, f)) + tirx.const(1.0, f))
    t = t * tirx.Select(x < tirx.const(0.0, f), tirx.const(-1.0, f), tirx.const(1.0, f))
    x2 = x * x
    series = tirx.const(TANH_SERIES[-1], f)
    for c in TANH_SERIES[-2::-1]:
        series = series * x2 + tirx.const(c, f)
    return tirx.Select(ax < tirx.const(TANH_SERIES_BELOW, f), x + x * x2 * series, t)


def silu_f32(x):
    """x / (1 + e^-x): x * sigmoid(x) would lose the result's precision below x = -87, where the
    sigmoid alone is subnormal."""
    return _bound(x, lambda x: x / (tirx.const(1.0, "float32") + exp_f32(-x)))


def _elementwise(fn, name):
    def compute(x: te.Tensor) -> te.Tensor:
        def one(*i):
            v = x[i]
            out = fn(v if x.dtype == "float32" else tirx.Cast("float32", v))
            return out if x.dtype == "float32" else tirx.Cast(x.dtype, out)
        return te.compute(x.shape, one, name=name)
    return compute


FUNCTIONS = {"relax.exp": (exp_f32, "exp"), "relax.sigmoid": (sigmoid_f32, "sigmoid"),
             "relax.tanh": (tanh_f32, "tanh"), "relax.nn.silu": (silu_f32, "silu")}


def legalize_map() -> dict:
    """``LegalizeOps`` overrides: these ops on fp32/fp16 tensors as ``FUNCTIONS``' arithmetic."""
    import tvm

    def rule(op_name, fn, name):
        default = tvm.ir.Op.get(op_name).get_attr("FLegalize")

        def legalize(bb, call):
            dtype = getattr(call.args[0].ty, "dtype", None)
            if dtype not in ("float32", "float16"):
                return default(bb, call)
            return bb.call_te(_elementwise(fn, name), call.args[0], primfunc_name_hint=name)
        return legalize

    return {op_name: rule(op_name, fn, name) for op_name, (fn, name) in FUNCTIONS.items()}
