"""The sparse channel-mix value kernels (tir_kernels/ffn_value/) against their numpy twins and the
dense product, on llvm: float and group-quantized weights, 0% / 50% / 99% / 100% zeros, one token
(decode), batches and prefill-sized row counts (4-row tiles plus 1-row tails), zeros shared by the
rows or not; and the GPU form (the dense TE product dlight schedules) run on llvm."""
import functools

import numpy as np
import pytest
import tvm
from kernel_harness import LLVM, assert_close, run

from rwkv_relax.quantization import group_quant as gq
from tir_kernels import kernel, retarget
from tir_kernels.ffn_value import dequantize_rows, ffn_value, ffn_value_numpy, ffn_value_q, ffn_value_q_numpy

F, C = 320, 192  # C: 6 column tiles of 32 floats, 3 tiles of 8 4-bit words
ZEROS = [0.0, 0.5, 0.99, 1.0]
ROWS = [1, 3, 4, 9, 18]  # decode, a tail-only batch, one full tile, tiles + tail, the packed-panel path
# fp32 outputs: only the summation order differs from the float64 twin; quantized: the folded
# -qmax sum cancels against the code sum (the decode GEMV measures the same ~5e-6)
RTOL = {"float32": 2e-6, "float16": 1e-3, "q": 2e-5}


@functools.lru_cache(maxsize=None)
def _build(kind: str, act: str, out: str, bits: int = 0):
    func = (ffn_value(F, C, act, act, out) if kind == "float" else ffn_value_q(F, C, bits, 32, act, out))
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return tvm.compile(mod, tvm.target.Target(LLVM))


def _activations(rng, rows: int, zeros: float, act: str, shared: bool) -> np.ndarray:
    """relu(.)^2-like activations with a fraction ``zeros`` of exact zeros, at the same hidden
    units for every row (``shared``) or independently per row (then a row tile's union is denser)."""
    x = np.square(rng.standard_normal((rows, F)))
    if shared:
        x[:, rng.random(F) < zeros] = 0
    else:
        x[rng.random((rows, F)) < zeros] = 0
    return x.astype(act)


@pytest.mark.parametrize("zeros", ZEROS)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("act", ["float32", "float16"])
def test_float_kernel_matches_twin_and_dense(rng, zeros, rows, act):
    w = rng.standard_normal((F, C)).astype(act)
    x = _activations(rng, rows, zeros, act, shared=rows % 2 == 1)
    (y,) = run(_build("float", act, "float32"), "main", [x, w], [(rows, C)])
    ref = ffn_value_numpy(x, w)
    np.testing.assert_allclose(ref, x.astype(np.float64) @ w.astype(np.float64), rtol=1e-12, atol=1e-12)
    if zeros == 1.0:
        np.testing.assert_array_equal(y, 0)  # nothing read, nothing added
    else:
        assert_close(y, ref, f"ffn_value {act} rows={rows} zeros={zeros}", RTOL["float32"])


@pytest.mark.parametrize("zeros", ZEROS)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("bits,act", [(4, "float16"), (8, "float16"), (4, "float32")])
def test_quantized_kernel_matches_twin_and_dequantized_dense(rng, zeros, rows, bits, act):
    q, s = gq.quantize(rng.standard_normal((F, C)).astype(np.float32), bits, 32, act)
    x = _activations(rng, rows, zeros, act, shared=rows % 2 == 0)
    (y,) = run(_build("q", act, "float32", bits), "main", [x, q, s], [(rows, C)])
    ref = ffn_value_q_numpy(x, q, s, bits, 32)
    np.testing.assert_allclose(dequantize_rows(q, s, bits, 32), gq.dequantize(q, s, bits, 32), rtol=1e-6, atol=0)
    if zeros == 1.0:
        np.testing.assert_array_equal(y, 0)
    else:
        assert_close(y, ref, f"ffn_value_q{bits} {act} rows={rows} zeros={zeros}", RTOL["q"])


@pytest.mark.parametrize("out", ["float16"])
def test_fp16_output_is_one_rounding_of_the_fp32_sum(rng, out):
    w = rng.standard_normal((F, C)).astype("float16")
    x = _activations(rng, 5, 0.5, "float16", shared=False)
    lib = _build("float", "float16", out)
    dev = tvm.cpu()
    y = tvm.runtime.empty((5, C), out, dev)
    lib["main"](tvm.runtime.tensor(x, dev), tvm.runtime.tensor(w, dev), y)
    assert_close(y.numpy().astype(np.float64), ffn_value_numpy(x, w), "fp16 out", RTOL["float16"])


def test_words_with_every_code_value(rng):
    """Random words, not only what quantize makes: every 4-bit code, the top code's sign bit set."""
    q = rng.integers(0, 2 ** 32, size=(F, C // 8), dtype=np.uint64).astype(np.uint32)
    s = (rng.random((F, C // 32)) * 0.1).astype("float16")
    x = _activations(rng, 4, 0.5, "float16", shared=False)
    (y,) = run(_build("q", "float16", "float32", 4), "main", [x, q, s], [(4, C)])
    assert_close(y, ffn_value_q_numpy(x, q, s, 4, 32), "any words", RTOL["q"])


def test_nonfinite_activations_propagate_like_the_dense_product(rng):
    w = rng.standard_normal((F, C)).astype("float32")
    x = _activations(rng, 1, 0.5, "float32", shared=True)
    x[0, np.flatnonzero(x[0])[0]] = np.nan
    (y,) = run(_build("float", "float32", "float32"), "main", [x, w], [(1, C)])
    assert np.isnan(y).all()


def test_gpu_form_is_the_dense_product(rng):
    """The "gpu" form (the dense TE product dlight schedules on GPUs), unscheduled on llvm."""
    bits = 4
    q, s = gq.quantize(rng.standard_normal((F, C)).astype(np.float32), bits, 32, "float16")
    x = _activations(rng, 3, 0.5, "float16", shared=False)
    func = retarget(kernel("ffn_value_q", F, C, bits, 32, "float16", "float32"), "gpu")
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    lib = tvm.compile(mod, tvm.target.Target(LLVM))
    (y,) = run(lib, "main", [x, q, s], [(3, C)])
    assert_close(y, ffn_value_q_numpy(x, q, s, bits, 32), "gpu form", RTOL["q"])


def test_unsupported_shapes_are_refused():
    with pytest.raises(ValueError, match="unsupported ffn_value"):
        ffn_value(F, 48, "float32", "float32", "float32")
    with pytest.raises(ValueError, match="unsupported ffn_value"):
        ffn_value_q(F, C, 3, 32, "float16", "float32")


@pytest.mark.parametrize("kind,act,bits", [("float", "float32", 0), ("float", "float16", 0), ("q", "float16", 4),
                                           ("q", "float32", 8)])
def test_a_row_does_not_depend_on_the_rows_beside_it(rng, kind, act, bits):
    """Bit for bit: a token alone (decode), in a 4-row tile (batches) and in a packed panel
    (prefill, 16+ rows) gets the same output, so batching sequences or splitting a prompt never
    changes a result (the server relies on it)."""
    lib = _build(kind, act, "float32", bits)
    if kind == "float":
        weights = [rng.standard_normal((F, C)).astype(act)]
    else:
        weights = list(gq.quantize(rng.standard_normal((F, C)).astype(np.float32), bits, 32, act))
    x = _activations(rng, 18, 0.5, act, shared=False)
    (whole,) = run(lib, "main", [x, *weights], [(18, C)])
    (tiles,) = run(lib, "main", [x[:9], *weights], [(9, C)])
    alone = np.concatenate([run(lib, "main", [x[t:t + 1], *weights], [(1, C)])[0] for t in range(18)])
    np.testing.assert_array_equal(whole, alone)
    np.testing.assert_array_equal(tiles, alone[:9])
