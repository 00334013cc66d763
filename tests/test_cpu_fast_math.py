"""rwkv_relax/targets/cpu/fast_math.py: exp, sigmoid, tanh and silu as vectorisable arithmetic.

Each is compiled for this CPU as a 16-lane vectorised loop and compared, over the fp32 range and
its special values, with float64 numpy; exp also with its numpy twin step for step. The LLVM IR
must hold no libm call (the point of the module), and the whole llvm pipeline must use them.
"""
import re

import numpy as np
import pytest
import tvm
from kernel_harness import LLVM, compile_func, run
from tvm import relax, te
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op, spec

from rwkv_relax.targets.cpu import cpu_pipeline
from rwkv_relax.targets.cpu.fast_math import X_MAX, X_MIN, exp_f32, exp_numpy, sigmoid_f32, silu_f32, tanh_f32

TARGET = tvm.target.Target(LLVM)
FLT_MIN = 1.1754943508222875e-38


def _inputs():
    small = np.geomspace(1e-30, 1.0, 20001)
    x = np.concatenate([np.linspace(-100, 100, 400_001), small, -small,
                        [0.0, -0.0, np.inf, -np.inf, np.nan, X_MAX, X_MIN, 88.7, -87.3, 0.25, -0.25]])
    x = x.astype(np.float32)
    return np.concatenate([x, np.zeros(-x.size % 16, np.float32)])


def _run(fn, x):
    a = te.placeholder((x.size,), "float32", name="a")
    y = te.compute(a.shape, lambda i: fn(a[i]), name="y")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, y]))
    (loop,) = sch.get_loops(sch.get_sblock("y"))
    sch.vectorize(sch.split(loop, [None, 16])[1])
    lib = compile_func(sch.mod["main"], LLVM, "main")
    ll = lib.mod.inspect_source("ll")
    assert re.search(r"<\d+ x float>", ll) and "expf" not in ll and "tanhf" not in ll
    (out,) = run(lib, "main", [x], [x.shape])
    return out


REFERENCES = {
    "exp": (exp_f32, np.exp, 1.5),  # 1 ulp, and LLVM may fuse a multiply-add
    "sigmoid": (sigmoid_f32, lambda v: 1 / (1 + np.exp(-v)), 2.5),
    "tanh": (tanh_f32, np.tanh, 4.5),
    "silu": (silu_f32, lambda v: v / (1 + np.exp(-v)), 2.5),
}


@pytest.mark.parametrize("name", REFERENCES)
def test_within_a_few_ulp_of_float64_with_ieee_special_values(name):
    fn, ref_fn, max_ulp = REFERENCES[name]
    x = _inputs()
    got = _run(fn, x)
    with np.errstate(over="ignore", invalid="ignore"):
        ref = ref_fn(x.astype(np.float64))
    # normal fp32 results whose exp argument is in range (beyond it exp saturates to inf / 0)
    ok = np.isfinite(ref) & (np.abs(ref) >= FLT_MIN) & (np.abs(ref) < np.finfo(np.float32).max)
    ok &= np.abs(x) < (X_MAX if name == "exp" else -X_MIN)
    ulp = np.abs(got[ok] - ref[ok]) / np.spacing(np.abs(ref[ok]).astype(np.float32))
    assert ulp.max() <= max_ulp, f"{name}: {ulp.max():.2f} ulp at x = {x[ok][ulp.argmax()]}"
    special = {np.inf: ref_fn(np.inf), -np.inf: ref_fn(-np.inf) if name != "silu" else None}
    for v, want in special.items():
        if want is not None:
            assert got[x == v][0] == np.float32(want), (name, v)
    assert np.isnan(got[np.isnan(x)]).all(), f"{name} must keep NaN"
    if name == "exp":
        assert (got[x < X_MIN] == 0).all() and np.isinf(got[x > X_MAX]).all()
        twin = exp_numpy(x)
        both = np.isfinite(twin) & (twin > 0)
        # LLVM may fuse a multiply-add into one FMA: the twin and the kernel differ by <= 1 ulp
        assert (np.abs(got[both] - twin[both]) <= np.spacing(twin[both])).all()


class _Gates(nn.Module):
    def forward(self, x: nn.Tensor):
        s = op.sigmoid(x)  # read twice by one consumer: compute_inline copies its Let twice
        return op.exp(x), s, op.tanh(x), op.silu(x), op.exp(op.sigmoid(x) * -0.6) + s * s


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_llvm_pipeline_uses_them(dtype, rng):
    """Through ``cpu_pipeline`` (fp16 computed in fp32 and rounded back), nested and read twice
    after fusion: no libm call is left, and the results match numpy."""
    mod, _ = _Gates().export_tvm({"forward": {"x": spec.Tensor(("T", 40), dtype)}})
    with TARGET:
        ex = tvm.compile(mod, TARGET, relax_pipeline=cpu_pipeline(TARGET))
    ll = "".join(m.inspect_source("ll") for m in [ex.mod, *ex.mod.imports] if m.kind == "llvm")
    assert "expf" not in ll and "tanhf" not in ll
    x = (rng.standard_normal((7, 40)) * 4).astype(dtype)
    got = relax.VirtualMachine(ex, tvm.cpu())["forward"](tvm.runtime.tensor(x))
    x64 = x.astype(np.float64)
    sig = 1 / (1 + np.exp(-x64))
    refs = (np.exp(x64), sig, np.tanh(x64), x64 / (1 + np.exp(-x64)), np.exp(sig * -0.6) + sig * sig)
    rtol = 1e-6 if dtype == "float32" else 2.0**-10  # fp16: one rounding of the fp32 value
    for g, r in zip(got, refs):
        with np.errstate(over="ignore"):
            r = r.astype(dtype).astype(np.float64)  # exp overflows fp16 above ~11: inf on both sides
        np.testing.assert_allclose(g.numpy().astype(np.float64), r, rtol=rtol, atol=1e-30)
