"""The llvm matmul schedule (rwkv_relax/targets/cpu/matmul.py) against numpy.

One small nn.Module holds the matmul shapes the RWKV blocks produce, with the epilogues FuseOps
fuses into them (sigmoid * gate + residual, relu^2, a cast to fp16 and back) and a token-shift
mix before one of them. It is exported with a static M of 1, 3 and 17 rows and a symbolic T,
compiled once per (K, N) with ``cpu_pipeline`` and checked against numpy. The checks that the rule
really fired look at the scheduled TIR (every NT_matmul function marked scheduled) and at the
LLVM IR (fp32 SIMD vectors and a parallel launch).
"""
import functools
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tvm
from kernel_harness import compile_func
from tvm import relax, te
from tvm.relax.backend.cpu_generic.pipeline import legalize_passes
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op, spec

from rwkv_relax.targets.cpu import cpu_pipeline
from rwkv_relax.targets.cpu.matmul import NTMatmulCPU, choose_tile, schedule_matmuls, simd_lanes
from tir_kernels.quant_matmul import q_matmul_numpy, q_matmul_te

TARGET = tvm.target.Target({"kind": "llvm", "mcpu": tvm.get_global_func("target.llvm_get_system_cpu")(),
                            "num-cores": 2})
SHAPES = [(40, 72), (192, 1536)]  # (K, N): odd tiles; a real-ish ratio
STATIC_M = (1, 3, 17)
SYMBOLIC_M = (1, 2, 5, 17, 33)  # T = 1, and below / across / off the row tile
RTOL = 1e-4  # relative to the largest magnitude of the reference


class Net(nn.Module):
    """Four NT matmuls (W stored (N, K)) with the epilogues/prologue of an RWKV block."""

    def __init__(self, K: int, N: int):
        self.w = nn.ModuleList([_Weight(N, K) for _ in range(4)])
        self.mix = nn.Parameter((K,), "float32")

    def forward(self, x: nn.Tensor, sx: nn.Tensor, gate: nn.Tensor):
        def lin(i, a):
            return op.matmul(a, op.permute_dims(self.w[i].weight), out_dtype="float32")
        xm = x * self.mix + sx * (1.0 - self.mix)  # token-shift mix
        plain = lin(0, xm)
        gated = op.sigmoid(lin(1, x)) * gate + gate  # receptance gate + residual
        sq = op.square(op.relu(lin(2, x)))  # channel-mix key
        half = lin(3, x).astype("float16").astype("float32")  # fp16 activations
        return plain, gated, sq, half

    # one exported method per row count (export_tvm names methods after module attributes)
    m1 = m3 = m17 = mT = forward


class _Weight(nn.Module):
    def __init__(self, N: int, K: int):
        self.weight = nn.Parameter((N, K), "float32")


def _reference(x, sx, gate, w, mix):
    xm = x * mix + sx * (1.0 - mix)
    with np.errstate(over="ignore"):
        sig = 1.0 / (1.0 + np.exp(-(x @ w[1].T)))
    return (xm @ w[0].T, sig * gate + gate, np.maximum(x @ w[2].T, 0) ** 2,
            (x @ w[3].T).astype(np.float16).astype(np.float32))


def _export(K, N):
    def sig(m):
        return {"x": spec.Tensor((m, K), "float32"), "sx": spec.Tensor((m, K), "float32"),
                "gate": spec.Tensor((m, N), "float32")}
    methods = {f"m{m}": sig(m) for m in STATIC_M}
    methods["mT"] = sig("T")
    mod, _ = Net(K, N).export_tvm(spec=methods)
    return mod


@functools.lru_cache(maxsize=None)
def _compiled(K, N):
    """One build per shape, shared by the tests of this module."""
    with TARGET:
        return tvm.compile(_export(K, N), TARGET, relax_pipeline=cpu_pipeline(TARGET))


def _check_numerics(K, N, rng):
    vm = relax.VirtualMachine(_compiled(K, N), tvm.cpu())
    w = [(rng.standard_normal((N, K)) / np.sqrt(K)).astype(np.float32) for _ in range(4)]
    mix = rng.uniform(0, 1, K).astype(np.float32)
    params = [tvm.runtime.tensor(a) for a in w + [mix]]
    calls = [(f"m{m}", m) for m in STATIC_M] + [("mT", m) for m in SYMBOLIC_M]
    for name, m in calls:
        x, sx = (rng.standard_normal((m, K)).astype(np.float32) for _ in range(2))
        gate = rng.standard_normal((m, N)).astype(np.float32)
        got = vm[name](*(tvm.runtime.tensor(a) for a in (x, sx, gate)), *params)
        for i, (g, r) in enumerate(zip(got, _reference(x, sx, gate, w, mix))):
            err = np.abs(g.numpy() - r).max() / np.abs(r).max()
            # the fp16 output may round the other way when the fp32 sums differ in the last bit
            tol = RTOL if i != 3 else 2.0**-10
            assert err < tol, f"{name} (M={m}) output {i}: relative error {err:.2e}"


@pytest.mark.parametrize("K,N", SHAPES)
def test_matches_numpy(K, N, rng):
    _check_numerics(K, N, rng)


def test_matches_numpy_on_two_threads():
    """TVM's pool starts hardware_concurrency/2 workers on x86 (1 on a 2-vCPU VM) and cannot
    grow once created, so the check reruns in a fresh process with TVM_NUM_THREADS=2: the
    parallel tiles then really run concurrently (a shared accumulator would show up here)."""
    env = dict(os.environ, TVM_NUM_THREADS="2")
    K, N = SHAPES[1]
    run = subprocess.run([sys.executable, __file__, str(K), str(N)], env=env, capture_output=True,
                         text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "threads=2" in run.stdout


def test_every_matmul_is_scheduled():
    """Each NT_matmul PrimFunc (static M, symbolic T, fused epilogues) is taken by the rule."""
    mod = _export(*SHAPES[1])
    with TARGET:
        mod = tvm.transform.Sequential([
            relax.transform.FuseTransposeMatmul(),
            *legalize_passes(TARGET),
            schedule_matmuls()])(mod)
    funcs = {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    matmuls = [name for name in funcs if "NT_matmul" in name]
    assert len(matmuls) == 4 * (len(STATIC_M) + 1), sorted(funcs)
    unscheduled = [name for name in matmuls if "tirx.is_scheduled" not in funcs[name].attrs]
    assert not unscheduled


def test_llvm_ir_is_vectorised_and_parallel():
    ll = _compiled(*SHAPES[1]).mod.imports[0].inspect_source("ll")
    lanes = simd_lanes(TARGET)
    assert f"<{lanes} x float>" in ll
    assert "TVMBackendParallelLaunch" in ll


def test_prologue_in_the_same_primfunc_is_inlined(rng):
    """A mix computed inside the matmul's PrimFunc (as a tensor_expr_op would) is inlined into
    the x loads; the result stays exact."""
    M, K, N = 5, 64, 48
    x, sx = (te.placeholder((M, K), "float32", name=n) for n in ("x", "sx"))
    m = te.placeholder((K,), "float32", name="m")
    w = te.placeholder((N, K), "float32", name="w")
    xm = te.compute((M, K), lambda i, k: x[i, k] * m[k] + sx[i, k] * (1 - m[k]), name="mix")
    r = te.reduce_axis((0, K), name="k")
    y = te.compute((M, N), lambda i, j: te.sum(xm[i, r] * w[j, r], axis=r), name="NT_matmul")
    z = te.compute((M, N), lambda i, j: te.sigmoid(y[i, j]), name="sig")
    func = te.create_prim_func([x, sx, m, w, z])
    sch = NTMatmulCPU().apply(func, TARGET, False)
    assert sch is not None
    assert "mix" not in [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    lib = compile_func(sch.mod["main"], TARGET, "main")
    a = [rng.standard_normal(s).astype(np.float32) for s in ((M, K), (M, K), (K,), (N, K))]
    out = tvm.runtime.empty((M, N), "float32", tvm.cpu())
    lib["main"](*(tvm.runtime.tensor(v) for v in a), out)
    ref = 1 / (1 + np.exp(-((a[0] * a[2] + a[1] * (1 - a[2])) @ a[3].T)))
    np.testing.assert_allclose(out.numpy(), ref, rtol=RTOL, atol=RTOL)


def test_weight_prologue_with_symbolic_rows(rng):
    """A dequantize in front of W (int8 codes x per-group scale, as a quantized Linear fuses it)
    is inlined into the W loads after the rows are padded; T = 1, 6 and 9 rows."""
    K, N, G = 64, 40, 16
    T = tvm.tirx.Var("T", "int64")
    x = te.placeholder((T, K), "float32", name="x")
    codes = te.placeholder((N, K), "int8", name="codes")
    scale = te.placeholder((N, K // G), "float32", name="scale")
    w = te.compute((N, K), lambda n, k: codes[n, k].astype("float32") * scale[n, k // G], name="dequantize")
    r = te.reduce_axis((0, K), name="k")
    y = te.compute((T, N), lambda t, n: te.sum(x[t, r] * w[n, r], axis=r), name="NT_matmul")
    sch = NTMatmulCPU().apply(te.create_prim_func([x, codes, scale, y]), TARGET, False)
    assert sch is not None
    lib = compile_func(sch.mod["main"], TARGET, "main")
    c = rng.integers(-127, 128, (N, K)).astype(np.int8)
    s = rng.uniform(0.01, 0.1, (N, K // G)).astype(np.float32)
    w_ref = c.astype(np.float32) * np.repeat(s, G, axis=1)
    for rows in (1, 6, 9):
        xa = rng.standard_normal((rows, K)).astype(np.float32)
        out = tvm.runtime.empty((rows, N), "float32", tvm.cpu())
        lib["main"](*(tvm.runtime.tensor(v) for v in (xa, c, s)), out)
        np.testing.assert_allclose(out.numpy(), xa @ w_ref.T, rtol=RTOL, atol=RTOL * np.abs(xa @ w_ref.T).max())


@pytest.mark.parametrize("w_kind", ["q4", "float16", "float32"])
def test_one_row_reads_w_directly_with_the_same_arithmetic(w_kind, rng):
    """A symbolic-T matmul whose W the many-rows form puts in a per-task block (dequantized
    4-bit codes, or a float W of K >= MIN_COPY_K, copied and widened) gets a second form, chosen
    at run time for calls of one row, that reads W in its loads. Both compute a row with the
    same operations in the same order: each row of a T-row call is bit-identical to that row
    run alone (the server's batch_decode of one sequence runs the first form, its batches and
    prefills the second)."""
    K, N = 256, 48
    m = tvm.tirx.Var("m", "int64")
    x = te.placeholder((m, K), "float16", name="x")
    if w_kind == "q4":
        q = te.placeholder((N, K // 8), "uint32", name="q")
        scale = te.placeholder((N, K // 32), "float16", name="scale")
        y = q_matmul_te(x, q, scale, 4, 32, "float16")
        weights = [rng.integers(0, 2**32, (N, K // 8), dtype=np.uint64).astype(np.uint32),
                   rng.uniform(0.01, 0.1, (N, K // 32)).astype(np.float16)]
        sch = NTMatmulCPU().apply(te.create_prim_func([x, q, scale, y]), TARGET, False)
    else:
        w = te.placeholder((N, K), w_kind, name="w")
        r = te.reduce_axis((0, K), name="k")
        acc = te.compute((m, N), lambda t, n: te.sum(x[t, r].astype("float32") * w[n, r].astype("float32"),
                                                     axis=r), name="NT_matmul")
        y = te.compute((m, N), lambda t, n: acc[t, n].astype("float16"), name="cast")
        weights = [rng.standard_normal((N, K)).astype(w_kind)]
        sch = NTMatmulCPU().apply(te.create_prim_func([x, w, y]), TARGET, False)
    assert sch is not None
    script = sch.mod["main"].script()
    assert script.count("if m == T.int64(1)") == 1
    lib = compile_func(sch.mod["main"], TARGET, "main")
    xa = rng.standard_normal((19, K)).astype(np.float16)

    def run(rows):
        out = tvm.runtime.empty((rows.shape[0], N), "float16", tvm.cpu())
        lib["main"](*(tvm.runtime.tensor(v) for v in (rows, *weights)), out)
        return out.numpy()
    alone = np.concatenate([run(xa[i:i + 1]) for i in range(xa.shape[0])])
    if w_kind == "q4":
        ref = q_matmul_numpy(xa, *weights, 4, 32)
    else:
        ref = xa.astype(np.float64) @ weights[0].astype(np.float64).T
    np.testing.assert_allclose(alone, ref, rtol=0, atol=2e-3 * np.abs(ref).max())
    for rows in (2, 4, 5, 19):
        assert (run(xa[:rows]) == alone[:rows]).all(), f"{rows} rows differ from each row alone"


def test_packed_dequantize_runs_once_per_task_for_prefill(rng):
    """The quantized Linear's TE function (uint32-packed 4-bit codes, fp16 scales) with symbolic
    T: in the many-rows form the dequantize block is computed per parallel task, outside the
    token-tile loop, so each weight is unpacked once per call whatever T is; numerics for T = 1,
    6, 9 and 33 (each form)."""
    K, N = 96, 40
    T = tvm.tirx.Var("T", "int64")
    x = te.placeholder((T, K), "float16", name="x")
    q = te.placeholder((N, K // 8), "uint32", name="q")
    scale = te.placeholder((N, K // 32), "float16", name="scale")
    y = q_matmul_te(x, q, scale, 4, 32, "float32")
    sch = NTMatmulCPU().apply(te.create_prim_func([x, q, scale, y]), TARGET, False)
    assert sch is not None
    loops = [sch.get(lp) for lp in sch.get_loops(sch.get_sblock("dequantize"))]
    assert loops[0].kind == tvm.tirx.ForKind.PARALLEL
    assert not any(_uses_var(lp.extent, T) for lp in loops)
    lib = compile_func(sch.mod["main"], TARGET, "main")
    qa = rng.integers(0, 2**32, (N, K // 8), dtype=np.uint64).astype(np.uint32)
    sa = rng.uniform(0.01, 0.1, (N, K // 32)).astype(np.float16)
    for rows in (1, 6, 9, 33):
        xa = rng.standard_normal((rows, K)).astype(np.float16)
        out = tvm.runtime.empty((rows, N), "float32", tvm.cpu())
        lib["main"](*(tvm.runtime.tensor(v) for v in (xa, qa, sa)), out)
        ref = q_matmul_numpy(xa, qa, sa, 4, 32)
        np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_one_row_gemv_prefetches_the_row_tiles_ahead(dtype, rng):
    """Decode (M = 1, float W): every k step prefetches the lines of a row tile ahead (the
    hardware prefetcher alone left cold fp16 rows at half the read bandwidth); the prefetches
    are clamped to W, so the last tiles read nothing past it, and the result is unchanged."""
    K, N = 192, 200  # 25 tiles of 8 rows: the prefetch of the last ones is clamped
    x = te.placeholder((1, K), dtype, name="x")
    w = te.placeholder((N, K), dtype, name="w")
    r = te.reduce_axis((0, K), name="k")
    y = te.compute((1, N), lambda i, j: te.sum(x[i, r].astype("float32") * w[j, r].astype("float32"), axis=r),
                   name="NT_matmul")
    sch = NTMatmulCPU().apply(te.create_prim_func([x, w, y]), TARGET, False)
    assert sch is not None
    script = sch.mod["main"].script()
    assert script.count('"llvm.prefetch') >= 1 and f"T.int64({N * K - 1})" in script
    lib = compile_func(sch.mod["main"], TARGET, "main")
    assert "@llvm.prefetch" in lib.mod.inspect_source("ll")
    xa = rng.standard_normal((1, K)).astype(dtype)
    wa = (rng.standard_normal((N, K)) / np.sqrt(K)).astype(dtype)
    out = tvm.runtime.empty((1, N), "float32", tvm.cpu())
    lib["main"](tvm.runtime.tensor(xa), tvm.runtime.tensor(wa), out)
    ref = xa.astype(np.float32) @ wa.astype(np.float32).T
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def _nt_matmul(dtype: str, K: int, N: int):
    """The scheduled ``y (T, N) = x (T, K) @ w (N, K).T`` (fp32 sums), T symbolic."""
    T = tvm.tirx.Var("T", "int64")
    x = te.placeholder((T, K), dtype, name="x")
    w = te.placeholder((N, K), dtype, name="w")
    r = te.reduce_axis((0, K), name="k")
    y = te.compute((T, N), lambda i, j: te.sum(x[i, r].astype("float32") * w[j, r].astype("float32"), axis=r),
                   name="NT_matmul")
    sch = NTMatmulCPU().apply(te.create_prim_func([x, w, y]), TARGET, False)
    assert sch is not None
    return sch


def _check_rows_against_float64(sch, dtype: str, K: int, N: int, rng):
    lib = compile_func(sch.mod["main"], TARGET, "main")
    wa = (rng.standard_normal((N, K)) / np.sqrt(K)).astype(dtype)
    for rows in (1, 5, 17):
        xa = rng.standard_normal((rows, K)).astype(dtype)
        out = tvm.runtime.empty((rows, N), "float32", tvm.cpu())
        lib["main"](tvm.runtime.tensor(xa), tvm.runtime.tensor(wa), out)
        ref = xa.astype(np.float64) @ wa.astype(np.float64).T
        np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("dtype,K", [("float16", 256), ("float16", 192), ("float32", 256)])
def test_prefill_copies_w_once_per_task_packed_and_sums_lanes_by_halving(dtype, K, rng):
    """Float x and W, symbolic T: fp16 x is widened in its padded copy and (from K = 256) W is
    copied once per task into an fp32 block packed by register tile, so the FMA loop reads fp32
    only (no conversion per load); each output's lane sum reads its accumulator whole and halves
    it by vector shuffles (lanes j + j + half, down to one). Numerics for T = 1, 5, 17 against
    float64 sums of the same values."""
    N = 96
    sch = _nt_matmul(dtype, K, N)
    update = sch.get(sch.get_sblock("NT_matmul_rf_update"))
    read_dtypes = sorted(str(rd.source.dtype) for rd in update.reads)  # accumulators, x, W
    assert read_dtypes == (["float32"] * 3 if K >= 256 or dtype == "float32" else ["float16", "float32", "float32"])
    # the fp32 -> fp16 -> fp32 round trip unsafe_set_dtype puts on the widened reads is gone
    assert update.body.value.script().count("T.Cast") == (1 if K < 256 and dtype == "float16" else 0)
    script = sch.mod["main"].script()
    assert ('with T.sblock("w_global")' in script) == (K >= 256)
    if K >= 256:  # W packed (N / cols, K / lanes, cols, lanes)
        w_copy = next(rd.source for rd in update.reads if rd.source.name == "w_global")
        assert len(w_copy.shape) == 4 and int(w_copy.shape[-1]) == simd_lanes(TARGET)
    lanes = simd_lanes(TARGET)
    assert re.search(rf"T\.Ramp\((T\.int64\()?0\)?, (T\.int64\()?1\)?, {lanes}\)", script)  # read whole
    half = lanes // 2
    while half:  # the upper half of each step: [half, ..., 2 * half - 1]
        assert f"[{', '.join(map(str, range(half, 2 * half)))}])" in script, half
        half //= 2
    _check_rows_against_float64(sch, dtype, K, N, rng)


@pytest.mark.parametrize("dtype,K", [("float16", 64), ("float32", 40), ("float32", 160)])
def test_short_reductions_vectorise_along_n(dtype, K, rng):
    """K <= SMALL_K (LoRA up-projections): no lane sums; W copied per task into a (N / C, K, C)
    block (C = V * lanes contiguous weights per k), accumulators (rows, C) in a local buffer, and
    the update reads fp32 only. Numerics for T = 1, 5, 17 against float64 sums."""
    from rwkv_relax.targets.cpu.matmul import SMALL_K
    assert K <= SMALL_K
    N = 192
    sch = _nt_matmul(dtype, K, N)
    script = sch.mod["main"].script()
    assert "_rf" not in script  # no rfactor, no lane sums
    update = sch.get(sch.get_sblock("NT_matmul_update"))
    assert sorted(str(rd.source.dtype) for rd in update.reads) == ["float32"] * 3
    w_copy = next(rd.source for rd in update.reads if rd.source.name == "w_global")
    lanes = simd_lanes(TARGET)
    assert len(w_copy.shape) == 3 and int(w_copy.shape[1]) == K and int(w_copy.shape[2]) % lanes == 0
    assert re.search(rf"T\.vectorized\((T\.int64\()?{lanes}\)", script)
    _check_rows_against_float64(sch, dtype, K, N, rng)


def test_gemm_tile_fits_the_register_file():
    """rows*cols accumulators + cols W + 1 x register fit: 4 x 6 with AVX-512 (N = 2688 once got
    4 x 7 and spilled), 4 x 3 with AVX2; decode keeps 1 x 8."""
    avx512 = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    avx2 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})
    for n in (768, 2688, 3072):
        assert (choose_tile(None, n, 768, avx512).rows, choose_tile(None, n, 768, avx512).cols) == (4, 6)
        assert (choose_tile(512, n, 768, avx2).rows, choose_tile(512, n, 768, avx2).cols) == (4, 3)
        assert choose_tile(1, n, 768, avx512).cols == 8
    assert choose_tile(None, 64, 768, avx512).cols == 4  # the largest divisor under the bound


def _uses_var(expr, var) -> bool:
    return any(v.same_as(var) for v in tvm.tirx.analysis.undefined_vars(expr))


def test_other_functions_are_left_alone():
    """Not an NT matmul (W stored (K, N): k is not contiguous; a plain row sum), or marked
    scheduled: the rule returns None / the pass keeps the function object."""
    M, K, N = 4, 32, 16
    x = te.placeholder((M, K), "float32", name="x")
    w_kn = te.placeholder((K, N), "float32", name="w")
    r = te.reduce_axis((0, K), name="k")
    nn_mm = te.compute((M, N), lambda i, j: te.sum(x[i, r] * w_kn[r, j], axis=r), name="NN_matmul")
    r2 = te.reduce_axis((0, K), name="k")
    row_sum = te.compute((M,), lambda i: te.sum(x[i, r2], axis=r2), name="row_sum")
    rule = NTMatmulCPU()
    assert rule.apply(te.create_prim_func([x, w_kn, nn_mm]), TARGET, False) is None
    assert rule.apply(te.create_prim_func([x, row_sum]), TARGET, False) is None

    w = te.placeholder((N, K), "float32", name="w")
    r3 = te.reduce_axis((0, K), name="k")
    nt = te.compute((M, N), lambda i, j: te.sum(x[i, r3] * w[j, r3], axis=r3), name="NT_matmul")
    marked = te.create_prim_func([x, w, nt]).with_attr("tirx.is_scheduled", True)
    mod = tvm.IRModule({"nt": marked})
    with TARGET:
        out = schedule_matmuls()(mod)
    assert out["nt"].same_as(marked)


if __name__ == "__main__":  # test_matches_numpy_on_two_threads
    print(f"threads={tvm.get_global_func('runtime.NumThreads')()}")
    _check_numerics(int(sys.argv[1]), int(sys.argv[2]), np.random.default_rng(0))


# ---- injective and row-wise kernels (rwkv_relax/targets/cpu/elementwise.py) -------------------
class _Rowwise(nn.Module):
    """A token-shift mix (three elementwise ops FuseOps fuses into one kernel) and a LayerNorm."""

    def __init__(self, C: int):
        self.mix = nn.Parameter((C,), "float32")
        self.w = nn.Parameter((C,), "float32")
        self.b = nn.Parameter((C,), "float32")

    def forward(self, x: nn.Tensor, sx: nn.Tensor):
        xm = x + (sx - x) * self.mix
        return xm, op.layer_norm(x, x.shape[-1], self.w, self.b, eps=1e-5)

    rows1 = rowsT = forward


def test_injective_and_rowwise_kernels_run_parallel_and_exact(rng):
    """Prefill-sized (symbolic T) elementwise and LayerNorm kernels get a parallel row loop and a
    vectorised last axis; one-token ones stay serial; results equal numpy's."""
    C = 256
    mod, _ = _Rowwise(C).export_tvm({name: {"x": spec.Tensor((m, C), "float32"), "sx": spec.Tensor((m, C), "float32")}
                                     for name, m in (("rows1", 1), ("rowsT", "T"))})
    with TARGET:
        scheduled = cpu_pipeline(TARGET)(mod)
    scripts = {gv.name_hint: f.script() for gv, f in scheduled.functions_items()
               if isinstance(f, tvm.tirx.PrimFunc) and gv.name_hint != "shape_func"}
    symbolic = [n for n, text in scripts.items() if "TypeVar(" in text]  # a symbolic row count T
    static = [n for n in scripts if n not in symbolic]
    assert len(symbolic) == len(static) == 2, sorted(scripts)
    assert all("T.parallel" in scripts[n] for n in symbolic)
    assert not any("T.parallel" in scripts[n] for n in static)
    assert all("T.vectorized" in scripts[n] for n in symbolic + static if "layer_norm" not in n)
    with TARGET:
        vm = relax.VirtualMachine(tvm.compile(mod, TARGET, relax_pipeline=cpu_pipeline(TARGET)), tvm.cpu())
    mix, w, b = (rng.standard_normal(C).astype(np.float32) for _ in range(3))
    for name, m in (("rows1", 1), ("rowsT", 1), ("rowsT", 300)):
        x, sx = (rng.standard_normal((m, C)).astype(np.float32) for _ in range(2))
        xm, ln = vm[name](tvm.runtime.tensor(x), tvm.runtime.tensor(sx), *(tvm.runtime.tensor(a) for a in (mix, w, b)))
        np.testing.assert_allclose(xm.numpy(), x + (sx - x) * mix, rtol=1e-6, atol=1e-6)
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        np.testing.assert_allclose(ln.numpy(), (x - mu) / np.sqrt(var + 1e-5) * w + b, rtol=1e-4, atol=1e-4)
