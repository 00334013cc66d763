"""The group-quantized decode GEMV (tir_kernels/quant_matmul/) against its numpy twin, on llvm.

Shapes cover the kernel's branches: 4-row tiles plus 1-3 tail rows (and fewer rows than one
tile), 8-word and 4-word lane blocks (K % 64 == 32), 4- and 8-bit codes, fp16/fp32 activations
and outputs. Words are random uint32 (every code value, the top code's sign bit set), not only
what ``quantize`` produces.
"""
import functools

import numpy as np
import pytest
import tvm
from tvm.s_tir import dlight as dl

from rwkv_relax.quantization import group_quant as gq
from tir_kernels import kernel, retarget
from tir_kernels.quant_matmul import (
    q_gemv,
    q_gemv_i8_numpy,
    q_gemv_i16_numpy,
    q_matmul_numpy,
    quantize_activations_i8,
    quantize_activations_i16,
)

# fp32 out: only the summation order differs from the float64 twin (measured ~2e-7 of max |y|)
RTOL = {"float32": 2e-6, "float16": 1e-3}  # fp16: one output rounding, 2**-11 relative


@functools.lru_cache(maxsize=None)
def _target():
    cpu = tvm.get_global_func("target.llvm_get_system_cpu")()
    return tvm.target.Target({"kind": "llvm", "mcpu": cpu})


@functools.lru_cache(maxsize=None)
def _build(n, k, bits, act, out, form="cpu"):
    func = q_gemv(n, k, bits, 32, act, out, form).with_attr("global_symbol", "main")
    return tvm.compile(tvm.IRModule({"main": func}), _target())


def _host_has(*features) -> bool:
    from tvm.target import codegen
    return all(codegen.target_has_features(f, _target()) for f in features)


def _ll(lib) -> str:
    return lib.mod.imports[0].inspect_source("ll") if lib.mod.imports else lib.mod.inspect_source("ll")


def _run(lib, x, q, s, n, out):
    y = tvm.runtime.tensor(np.zeros((1, n), out))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(q), tvm.runtime.tensor(s), y)
    return y.numpy()


CASES = [  # n, k, bits, act, out
    (3, 64, 4, "float32", "float32"),  # tail rows only, no 4-row tile
    (7, 96, 4, "float16", "float32"),  # K % 64 == 32: 4-word lane blocks
    (258, 768, 4, "float16", "float16"),  # 64 tasks of uneven length + 2 tail rows
    (61, 672, 4, "float32", "float32"),
    (1001, 256, 8, "float16", "float32"),
    (13, 672, 8, "float32", "float16"),
]


@pytest.mark.parametrize("n,k,bits,act,out", CASES)
def test_gemv_matches_numpy_twin_on_any_words(n, k, bits, act, out):
    rng = np.random.default_rng(n * k + bits)
    q = rng.integers(0, 2**32, (n, k * bits // 32), dtype=np.uint64).astype(np.uint32)
    s = (rng.standard_normal((n, k // 32)) * 0.05).astype(act)
    x = rng.standard_normal((1, k)).astype(act)
    y = _run(_build(n, k, bits, act, out), x, q, s, n, out)
    ref = q_matmul_numpy(x, q, s, bits, 32)
    np.testing.assert_allclose(y, ref, rtol=0, atol=RTOL[out] * np.abs(ref).max())


@pytest.mark.parametrize("bits", [4, 8])
def test_gemv_on_quantized_weights_matches_dequantized_matmul(bits):
    """Through ``quantize``: y equals x @ dequantize(q, s).T (the twin is not the only oracle)."""
    rng = np.random.default_rng(bits)
    n, k = 50, 320
    w = rng.standard_normal((n, k)).astype(np.float32)
    q, s = gq.quantize(w, bits, 32, "float32")
    x = rng.standard_normal((1, k)).astype(np.float32)
    y = _run(_build(n, k, bits, "float32", "float32"), x, q, s, n, "float32")
    ref = x.astype(np.float64) @ gq.dequantize(q, s, bits, 32).astype(np.float64).T
    np.testing.assert_allclose(y, ref, rtol=0, atol=2e-6 * np.abs(ref).max())
    # gq.dequantize rounds each weight to fp32; the twin keeps float64
    np.testing.assert_allclose(q_matmul_numpy(x, q, s, bits, 32), ref, rtol=0, atol=1e-6 * np.abs(ref).max())


def test_gemv_is_vectorised_on_llvm():
    """The point of the kernel: whole words per SIMD lane, 8-wide int->float and FMA."""
    ll = _ll(_build(258, 768, 4, "float16", "float16"))
    assert "sitofp <8 x i32>" in ll
    assert "<8 x float>" in ll and "fmuladd.v8f32" in ll or "fma.v8f32" in ll


AVX2_CASES = [  # n, k, bits, out
    (3, 64, 4, "float32"),  # tail rows only, no 4-row tile
    (8 * 64 + 3, 64, 4, "float32"),  # tiles + tail rows
    (258, 768, 4, "float16"),  # 64 tasks of uneven length + 2 tail rows
    (8 * 128, 128, 4, "float16"),
    (8 * 96 + 1, 96, 8, "float32"),  # K % 64 == 32 is fine at 8 bits (K/4 words)
    (13, 672, 8, "float16"),
]


@pytest.mark.skipif(not _host_has("avx2"), reason="this CPU has no AVX2")
@pytest.mark.parametrize("n,k,bits,out", AVX2_CASES)
def test_avx2_form_matches_its_twin_and_the_exact_product(n, k, bits, out):
    """int16 activations: the kernel equals its twin up to fp32 rounding; against the exact
    product the error stays far below fp16 rounding of the activations (2**-11)."""
    rng = np.random.default_rng(n + bits)
    q = rng.integers(0, 2**32, (n, k * bits // 32), dtype=np.uint64).astype(np.uint32)
    s = (rng.standard_normal((n, k // 32)) * 0.05).astype(np.float16)
    x = (rng.standard_normal((1, k)) * np.exp(rng.standard_normal((1, k)))).astype(np.float16)
    x[0, :32] = 0  # an all-zero group (scale 1, codes 0)
    lib = _build(n, k, bits, "float16", out, "avx2")
    assert "pmadd.wd" in _ll(lib)
    y = _run(lib, x, q, s, n, out)
    exact = q_matmul_numpy(x, q, s, bits, 32)
    m = np.abs(exact).max()
    np.testing.assert_allclose(y, q_gemv_i16_numpy(x, q, s, bits, 32), rtol=0, atol=RTOL[out] * m)
    np.testing.assert_allclose(y, exact, rtol=0, atol=max(RTOL[out], 2e-4) * m)


def test_int16_activation_quantization_bound():
    """Per element at most half a step, 2**-16 of the group's largest |x|."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((1, 256)) * np.exp(2 * rng.standard_normal((1, 256)))).astype(np.float16)
    codes, scale = quantize_activations_i16(x, 32)
    err = np.abs(codes.astype(np.float64) * np.repeat(scale, 32) - x[0].astype(np.float64))
    bound = np.repeat(np.abs(x[0].astype(np.float64)).reshape(-1, 32).max(axis=1), 32) * 2.0**-16
    assert np.all(err <= bound * 1.0001) and np.abs(codes).max() == 32767


def test_avx2_form_falls_back_where_it_does_not_apply():
    """fp32 activations (kept exact) and K whose words do not fill 8-word vectors (K % 64 == 32
    at 4 bits): the "avx2" form is the "cpu" form; fp16 activations at any N: the int16 GEMV."""
    for args in [(256, 128, 4, 32, "float32", "float32"), (256, 96, 4, 32, "float16", "float32")]:
        assert q_gemv(*args, target="avx2").script() == q_gemv(*args, target="cpu").script()
    for n in (3, 768):
        assert "pmadd.wd" in q_gemv(n, 128, 4, 32, "float16", "float32", target="avx2").script()


def test_cpu_pipeline_retargets_only_with_avx2():
    from rwkv_relax.targets.cpu import retarget_for_cpu_features
    func = kernel("q_gemv", 8 * 128, 128, 4, 32, "float16", "float32")
    mod = tvm.IRModule({"q_gemv": func})
    plain = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"})
    avx2 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})
    assert retarget_for_cpu_features(plain)(mod)["q_gemv"].script() == func.script()
    assert "pmadd.wd" in retarget_for_cpu_features(avx2)(mod)["q_gemv"].script()


INT8_FORMS = [  # form, the instruction that must be in its LLVM IR, host features it needs
    pytest.param("int8_vnni", "vpdpbusd", marks=pytest.mark.skipif(
        not _host_has("avx512vnni", "avx512vl"), reason="this CPU has no AVX512-VNNI")),
    pytest.param("int8_avx2", "pmadd.ub.sw", marks=pytest.mark.skipif(not _host_has("avx2"), reason="no AVX2")),
]
INT8_CASES = [  # n, k, bits, act, out
    (3, 64, 4, "float16", "float32"),  # tail rows only
    (8 * 64 + 3, 128, 4, "float32", "float32"),  # fp32 activations are quantized too (opt-in)
    (258, 768, 4, "float16", "float16"),
    (8 * 96 + 1, 96, 8, "float32", "float32"),
    (13, 672, 8, "float16", "float16"),
]


@pytest.mark.parametrize("form,instruction", INT8_FORMS)
@pytest.mark.parametrize("n,k,bits,act,out", INT8_CASES)
def test_int8_forms_match_their_twin_and_stay_within_the_rounding_bound(form, instruction, n, k, bits, act, out):
    """Any words (the top code 2**bits - 1 included: 8-bit codes x 127 would saturate a naive
    vpmaddubsw). Against the twin: fp32 rounding. Against the exact product: at most the
    activation rounding, half a step (max|x_g| / 254) per element times |w|."""
    rng = np.random.default_rng(n + k + bits)
    q = rng.integers(0, 2**32, (n, k * bits // 32), dtype=np.uint64).astype(np.uint32)
    q[0, :] = 0xFFFFFFFF  # every code at its top
    s = (rng.standard_normal((n, k // 32)) * 0.05).astype(act)
    x = (rng.standard_normal((1, k)) * np.exp(rng.standard_normal((1, k)))).astype(act)
    x[0, :32] = 0  # an all-zero group (scale 1, codes 0)
    lib = _build(n, k, bits, act, out, form)
    assert instruction in _ll(lib)
    y = _run(lib, x, q, s, n, out).astype(np.float64)
    exact = q_matmul_numpy(x, q, s, bits, 32)
    m = np.abs(exact).max()
    np.testing.assert_allclose(y, q_gemv_i8_numpy(x, q, s, bits, 32), rtol=0, atol=RTOL[out] * m)
    w = np.abs(q_matmul_numpy(np.eye(k), q, s, bits, 32)).T  # |W| (n, k)
    half_step = np.repeat(np.abs(x[0].astype(np.float64)).reshape(-1, 32).max(axis=1), 32) / 254
    assert np.all(np.abs(y - exact) <= w @ half_step + RTOL[out] * m)
    assert np.abs(y - exact).max() > 1e-5 * m  # int8 activations: not the exact product


def test_int8_activation_quantization_bound():
    """Codes in [-127, 127] (never -128, which the sign tricks of int8 dots cannot negate), the
    group's largest |x| at +-127, each element within half a step."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((1, 256)) * np.exp(2 * rng.standard_normal((1, 256)))).astype(np.float32)
    codes, scale = quantize_activations_i8(x, 32)
    assert codes.dtype == np.int8 and np.abs(codes.astype(np.int32)).max() == 127 and codes.min() >= -127
    err = np.abs(codes.astype(np.float64) * np.repeat(scale, 32) - x[0].astype(np.float64))
    assert np.all(err <= np.repeat(scale.astype(np.float64), 32) * 0.5 * 1.0001)


def test_int8_forms_fall_back_where_words_do_not_fill_a_vector():
    """K % 64 == 32 at 4 bits (12 words): the exact "cpu" form."""
    args = (256, 96, 4, 32, "float16", "float32")
    for form in ("int8_vnni", "int8_avx2"):
        assert q_gemv(*args, target=form).script() == q_gemv(*args, target="cpu").script()


def test_cpu_pipeline_picks_the_int8_form_by_cpu_features():
    from rwkv_relax.errors import ConfigError
    from rwkv_relax.targets.cpu import retarget_for_cpu_features
    mod = tvm.IRModule({"q_gemv": kernel("q_gemv", 8 * 128, 128, 4, 32, "float16", "float32")})

    def picked(mcpu):
        target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
        return retarget_for_cpu_features(target, int8_activations=True)(mod)["q_gemv"].script()
    assert "vpdpbusd" in picked("icelake-server") and "pmadd.ub.sw" in picked("haswell")
    with pytest.raises(ConfigError, match="needs an x86 CPU with AVX2"):
        picked("x86-64")


def test_gpu_form_is_left_for_dlight():
    """Retargeting swaps in the TE function: unscheduled (dlight's GEMV rule takes it), tagged."""
    cpu = kernel("q_gemv", 64, 128, 4, 32, "float16", "float32")
    assert "tirx.is_scheduled" in cpu.attrs
    gpu = retarget(cpu, "gpu")
    assert "tirx.is_scheduled" not in gpu.attrs
    assert str(gpu.attrs["rwkv_kernel"]) == "q_gemv"
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_80", "host": "llvm",
                                "max_shared_memory_per_block": 49152})
    with target:  # the GEMV rule itself takes it (not only dlight's Fallback)
        sch = dl.gpu.GEMV().apply(gpu.with_attr("global_symbol", "main"), target, False)
    assert sch is not None and "threadIdx" in sch.mod.script()


def test_unsupported_layouts_are_refused():
    with pytest.raises(ValueError, match="unsupported"):
        q_gemv(8, 48, 4, 32, "float32", "float32")  # K not a multiple of 32
    with pytest.raises(ValueError, match="unknown q_gemv target"):
        q_gemv(8, 64, 4, 32, "float32", "float32", target="metal")


def test_a_kernel_is_parsed_once_however_many_layers_use_it(monkeypatch):
    """Every layer of a model asks for the same GEMVs and scans; each is parsed from TVMScript
    once (0.3-0.5 s a parse: 111 s of a 24-layer 1.5B q4f16_1 export before), and the exported
    module does not depend on the layer count beyond its Relax functions."""
    import tir_kernels
    from rwkv_relax.pipeline import ModelSource, export
    from rwkv_relax.registry import get_spec

    spec = get_spec("rwkv5")
    parsed: list[tuple] = []
    for name, factory in tir_kernels.FACTORIES.items():
        def counted(*args, _name=name, _factory=factory, **kwargs):
            parsed.append((_name, repr(args)))
            return _factory(*args, **kwargs)
        monkeypatch.setitem(tir_kernels.FACTORIES, name, counted)
    kernels = {}
    for n_layer in (1, 3):
        monkeypatch.setattr(tir_kernels, "_FORMS", {})
        parsed.clear()
        cfg = spec.config_cls.from_dict({"n_layer": n_layer, "n_embd": 128, "vocab_size": 512, "head_size": 64})
        mod, _ = export(ModelSource(spec, cfg), "q4f16_1")
        kernels[n_layer] = (sorted(parsed), sorted(gv.name_hint for gv, f in mod.functions.items()
                                                   if isinstance(f, tvm.tirx.PrimFunc)))
    assert "q_gemv" in {name for name, _ in kernels[1][0]}
    assert len(kernels[1][0]) == len(set(kernels[1][0]))  # no factory called twice with the same sizes
    assert kernels[1] == kernels[3]
