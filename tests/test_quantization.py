"""Quantization: the packed format, the compiled kernels against a float64 model on the
de-quantized weights, quality bounds, sizes on disk, conversion memory and bad input."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tvm

from rwkv_relax import RWKVRelaxError, load_model
from rwkv_relax.convert_weight import main as convert_main
from rwkv_relax.model_dir import convert
from rwkv_relax.quantization import MODES, get_mode
from rwkv_relax.quantization import group_quant as gq
from rwkv_relax.reference import dequantized_params
from rwkv_relax.registry import get_spec
from rwkv_relax.testing.quality import compare, position_logits
from rwkv_relax.testing.random_weights import write_checkpoint
from rwkv_relax.versions.rwkv5.random import random_tensors as rwkv5_tensors

SHAPE = dict(n_layer=2, n_embd=192, vocab_size=1536, head_size=64, dim_ffn=672, seed=11)
SHAPE4 = dict(n_layer=2, n_embd=160, vocab_size=1001, dim_ffn=608, seed=12)  # odd vocab: GEMV tail rows
SHAPE7 = dict(n_layer=2, n_embd=192, vocab_size=1201, dim_ffn=704, dim_decay_lora=40, dim_a_lora=24,
              dim_v_lora=56, dim_gate_lora=72, seed=13)
SHAPE6 = dict(n_layer=2, n_embd=192, vocab_size=1201, dim_ffn=640, dim_mix_lora=12, dim_decay_lora=40, seed=2)
ARCH_SHAPES = {"rwkv5": SHAPE, "rwkv4": SHAPE4, "rwkv6": SHAPE6, "rwkv7": SHAPE7}
# a parameter each version keeps in fp32 whatever the mode (the decay, in its load-time form)
FP32_PARAM = {"rwkv5": "blocks.0.att.time_decay", "rwkv4": "blocks.0.att.time_decay",
              "rwkv6": "blocks.0.att.time_decay", "rwkv7": "blocks.0.att.w0"}


@pytest.mark.parametrize("bits", [4, 8])
def test_group_quant_roundtrip_and_packing(rng, bits):
    w = rng.standard_normal((48, 96)).astype(np.float32) * rng.uniform(0.01, 3, (48, 1)).astype(np.float32)
    w[3, :32] = 0  # an all-zero group must come back as zeros
    q, s = gq.quantize(w, bits, 32, "float32", rows_per_chunk=7)
    assert q.dtype == np.uint32 and q.shape == (48, 96 * bits // 32) and s.shape == (48, 3)
    back = gq.dequantize(q, s, bits, 32)
    step = np.repeat(s, 32, axis=1)
    assert np.all(np.abs(back - w) <= step / 2 + 1e-6)
    assert np.all(back[3, :32] == 0)
    # codes are unsigned in [0, 2 * qmax]: the top code (2**bits - 1) is never produced
    codes = (q[..., None] >> (np.arange(32 // bits, dtype=np.uint32) * bits)) & (2 ** bits - 1)
    assert codes.max() <= 2 * gq.qmax(bits)


@pytest.mark.parametrize("bits", [4, 8])
def test_te_dequantize_matches_numpy(rng, bits):
    from tvm import te
    n, k = 40, 64
    q, s = gq.quantize(rng.standard_normal((n, k)).astype(np.float32), bits, 32, "float16")
    qt = te.placeholder(q.shape, "uint32", name="q")
    st = te.placeholder(s.shape, "float16", name="s")
    from tir_kernels.quant_matmul import te_dequantize
    out = te_dequantize(qt, st, bits, 32, "float32")
    f = tvm.compile(te.create_prim_func([qt, st, out]), target="llvm")
    res = tvm.runtime.empty((n, k), "float32", tvm.cpu())
    f(tvm.runtime.tensor(q), tvm.runtime.tensor(s), res)
    np.testing.assert_array_equal(res.numpy(), gq.dequantize(q, s, bits, 32))


@pytest.fixture(scope="module")
def ckpt(factory):
    return factory.checkpoint("rwkv5", "quant", **SHAPE)


# fp32 modes: float rounding only. fp16 modes: activations are rounded to fp16 (2**-11 relative)
# at every layer boundary and projection output, so logits move by a few 1e-4 of their scale.
TOLERANCE = {"float32": 2e-5, "float16": 3e-3}


# every version x mode in the default layout; the sparse hidden-major channel-mix value
# (tir_kernels/ffn_value/) for every version in a float and a 4-bit mode, and the rest on RWKV-5
CASES = ([(arch, mode, "dense") for arch in ARCH_SHAPES for mode in MODES]
         + [(arch, mode, "hidden_major") for arch in ARCH_SHAPES for mode in ("q0f32", "q4f16_1")]
         + [("rwkv5", mode, "hidden_major") for mode in ("q0f16", "q8f16_1", "q4f32_1")])


@pytest.mark.parametrize("arch,mode,layout", CASES)
def test_compiled_matches_float64_model_on_dequantized_weights(factory, rng, mode, arch, layout):
    """Prefill (TE dequantize-matmul under the CPU schedule) and decode (the hand-written GEMV);
    hidden_major: the channel-mix value through the sparse kernel, prefill (packed panels) and
    decode (chunked rows)."""
    shape = ARCH_SHAPES[arch]
    ckpt = factory.checkpoint(arch, "quant", **shape)
    # the default layout is built without the override: the same library as the other tests' (one build)
    layout_kwargs = {} if layout == "dense" else {"overrides": {"ffn_value_layout": layout}}
    model = load_model(factory.library(ckpt, quantization=mode, **layout_kwargs), ckpt)
    assert model.metadata["model_config"]["ffn_value_layout"] == layout
    value = "blocks.1.ffn.value." + ("weight" if mode.startswith("q0") else "q_weight")
    assert (value + "_t" in {p["name"] for p in model.metadata["params"]}) == (layout == "hidden_major")
    params = {p["name"]: t.numpy() for p, t in zip(model.metadata["params"], model.params)}
    assert params[FP32_PARAM[arch]].dtype == np.float32
    if get_mode(mode).quantized:
        assert any(n.endswith("q_weight") for n in params)
    if arch == "rwkv7":  # the LoRA factors are never quantized (llama.cpp's policy too)
        assert params["blocks.1.att.v_lora.down"].shape == (SHAPE7["dim_v_lora"], SHAPE7["n_embd"])
        assert params["blocks.1.att.v_lora.down"].dtype == np.dtype(get_mode(mode).act_dtype)
    if arch == "rwkv6":  # the ddlerp and decay LoRA factors neither
        assert params["blocks.1.att.maa_lora.down"].shape == (5 * SHAPE6["dim_mix_lora"], SHAPE6["n_embd"])
        assert params["blocks.1.att.maa_lora.up_g"].dtype == np.dtype(get_mode(mode).act_dtype)
        assert params["blocks.1.att.decay_lora.up"].shape == (SHAPE6["n_embd"], SHAPE6["dim_decay_lora"])
    ref = get_spec(arch).reference(model.metadata["model_config"],
                                   dequantized_params(params, get_mode(mode).weight_bits))
    tokens = rng.integers(0, shape["vocab_size"], 40)
    theirs, rstate, _ = ref.forward(tokens)
    ours, state = model.prefill(tokens)
    scale = np.abs(theirs).max()
    assert np.abs(ours - theirs).max() <= TOLERANCE[get_mode(mode).act_dtype] * scale
    token = int(rng.integers(shape["vocab_size"]))
    np.testing.assert_allclose(model.decode(token, state)[0], ref.forward([token], rstate)[0],
                               atol=TOLERANCE[get_mode(mode).act_dtype] * scale, rtol=0)


def test_quantized_batches_match_single_sequences(factory, ckpt, rng):
    """batch_prefill / batch_decode run the TE dequantize-matmul with the weight block unpacked
    once per task for all rows; single decode runs the GEMV: same logits up to fp16 rounding."""
    model = load_model(factory.library(ckpt, quantization="q4f16_1"), ckpt)
    seqs = [rng.integers(0, SHAPE["vocab_size"], n).tolist() for n in (5, 1, 9)]
    logits, states = model.batch_prefill(seqs, [None] * 3)
    nxt = [int(t) for t in rng.integers(0, SHAPE["vocab_size"], 3)]
    blogits, _ = model.batch_decode(nxt, states)
    for i, seq in enumerate(seqs):
        single, st = model.prefill(seq)
        scale = np.abs(single).max()
        np.testing.assert_allclose(logits[i], single, atol=TOLERANCE["float16"] * scale, rtol=0)
        np.testing.assert_allclose(blogits[i], model.decode(nxt[i], st)[0],
                                   atol=TOLERANCE["float16"] * scale, rtol=0)


# Bounds on random-weight models (the worst case for group quantization: Gaussian weights have
# no outliers to waste range on, but also no structure; logits of random models are flat, so
# top-1 flips easily). 8-bit noise is ~1/250 of each group's range; 4-bit ~1/14.
QUALITY_BOUNDS = {"q0f16": (1e-4, 0.98), "q8f16_1": (2e-3, 0.95),
                  "q4f32_1": (0.15, 0.6), "q4f16_1": (0.15, 0.6)}


@pytest.mark.parametrize("arch", list(ARCH_SHAPES))
def test_quality_against_fp32(factory, arch):
    shape = ARCH_SHAPES[arch]
    ckpt = factory.checkpoint(arch, "quant", **shape)
    base = load_model(factory.library(ckpt, quantization="q0f32"), ckpt)
    tokens = np.random.default_rng(3).integers(0, shape["vocab_size"], 256)
    ref = position_logits(base, tokens)
    results = {}
    for mode, (max_kl, min_top1) in QUALITY_BOUNDS.items():
        r = compare(ref, position_logits(load_model(factory.library(ckpt, quantization=mode), ckpt), tokens))
        results[mode] = r
        assert r["finite"] and r["mean_kl"] <= max_kl and r["top1"] >= min_top1, (mode, r)
    # more bits, less damage
    assert results["q8f16_1"]["mean_kl"] < results["q4f16_1"]["mean_kl"] / 10


def _host_int8_form():
    from rwkv_relax.targets.cpu import LLVM, int8_form
    return int8_form(LLVM.target())


@pytest.mark.skipif(_host_int8_form() is None, reason="this CPU has no AVX2")
@pytest.mark.parametrize("mode", ["q8f16_1", "q4f16_1"])
def test_int8_activation_library(factory, ckpt, rng, mode):
    """build --cpu-int8-activations: recorded in _metadata; prefill's GEMMs stay exact (equal
    states; its logits come from the one-row head GEMV), decode steps run the int8 GEMVs (logits
    move by about the activation rounding) and stay within the mode's quality bounds against fp32."""
    exact = load_model(factory.library(ckpt, quantization=mode), ckpt)
    int8 = load_model(factory.library(ckpt, quantization=mode, cpu_int8_activations=True), ckpt)
    assert int8.metadata["cpu_int8_activations"] is True and "cpu_int8_activations" not in exact.metadata
    tokens = rng.integers(0, SHAPE["vocab_size"], 17)
    (_, sa), (_, sb) = exact.prefill(tokens), int8.prefill(tokens)
    theirs = exact.state_tensors(sa)
    for key, value in int8.state_tensors(sb).items():
        np.testing.assert_array_equal(value, theirs[key], err_msg=str(key))
    token = int(rng.integers(SHAPE["vocab_size"]))
    da, db = exact.decode(token, sa)[0], int8.decode(token, sb)[0]
    assert 0 < np.abs(da - db).max() < 0.05 * np.abs(da).max()
    positions = np.random.default_rng(3).integers(0, SHAPE["vocab_size"], 256)
    ref = position_logits(load_model(factory.library(ckpt, quantization="q0f32"), ckpt), positions)
    r = compare(ref, position_logits(int8, positions))
    max_kl, min_top1 = QUALITY_BOUNDS[mode]
    assert r["finite"] and r["mean_kl"] <= max_kl and r["top1"] >= min_top1, r


def shard_bytes(path):
    return sum(f.stat().st_size for f in path.glob("params_shard_*.bin"))


def test_sizes_on_disk(tmp_path):
    p = write_checkpoint(rwkv5_tensors(n_layer=2, n_embd=256, vocab_size=4096, seed=2), tmp_path / "m.pth")
    sizes = {m: shard_bytes(convert(str(p), m, tmp_path / m)) for m in ("q0f16", "q4f16_1", "q8f16_1")}
    assert sizes["q4f16_1"] <= 0.30 * sizes["q0f16"], sizes
    assert sizes["q8f16_1"] <= 0.55 * sizes["q0f16"], sizes
    meta = json.loads((tmp_path / "q4f16_1" / "tensor-cache.json").read_text())["metadata"]
    assert meta["quantization"] == "q4f16_1" and meta["model_type"] == "rwkv5"


def test_converted_params_load_and_match(factory, ckpt, tmp_path, rng):
    lib = factory.library(ckpt, quantization="q4f16_1")
    params_dir = convert(str(ckpt), "q4f16_1", tmp_path / "params")
    tokens = rng.integers(0, SHAPE["vocab_size"], 20)
    a = load_model(lib, params_dir).prefill(tokens)[0]
    b = load_model(lib, ckpt).prefill(tokens)[0]
    np.testing.assert_array_equal(a, b)
    with pytest.raises(RWKVRelaxError, match="quantization=q4f16_1, the library is quantization=q0f32"):
        load_model(factory.library(ckpt, quantization="q0f32"), params_dir)


def test_corrupt_and_truncated_shards(factory, ckpt, tmp_path):
    lib = factory.library(ckpt, quantization="q8f16_1")
    params_dir = convert(str(ckpt), "q8f16_1", tmp_path / "params", shard_cap_mb=1)
    shard = sorted(params_dir.glob("params_shard_*.bin"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(RWKVRelaxError, match="md5"):
        load_model(lib, params_dir)
    shard.write_bytes(bytes(data[:-100]))
    with pytest.raises(RWKVRelaxError, match="truncated"):
        load_model(lib, params_dir)


def test_convert_bad_input_leaves_nothing(tmp_path, capsys):
    t = rwkv5_tensors(n_layer=2, n_embd=128, vocab_size=1024)
    good = write_checkpoint(t, tmp_path / "good.pth")
    assert convert_main([str(good), "--quantization", "q5f16", "-o", str(tmp_path / "o1")]) == 2
    assert "unknown quantization 'q5f16'" in capsys.readouterr().err
    t["blocks.1.ffn.value.weight"][0, 0] = np.inf
    bad = write_checkpoint(t, tmp_path / "bad.pth")
    assert convert_main([str(bad), "--quantization", "q4f16_1", "-o", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NaN or Inf" in err[0] and "blocks.1.ffn.value.weight" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pth", "good.pth"]


MEMORY_PROBE = textwrap.dedent("""
    import sys, threading, time
    from rwkv_relax.model_dir import convert
    import rwkv_relax.pipeline  # import everything before the baseline
    def anon_mib():
        s = open("/proc/self/status").read()
        return int(s.split("RssAnon:")[1].split()[0]) / 1024
    base, peak, done = anon_mib(), [0.0], []
    def sample():
        while not done:
            peak[0] = max(peak[0], anon_mib())
            time.sleep(0.001)
    th = threading.Thread(target=sample)
    th.start()
    convert(sys.argv[1], sys.argv[2], sys.argv[3], shard_cap_mb=32)
    done.append(1)
    th.join()
    print(peak[0] - base)
""")


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory):
    return write_checkpoint(rwkv5_tensors(n_layer=12, n_embd=768, vocab_size=65536),
                            tmp_path_factory.mktemp("big") / "big.pth")


@pytest.mark.parametrize("mode", ["q4f16_1", "q0f32"])
def test_conversion_memory_stays_near_one_tensor(big_checkpoint, tmp_path, mode):
    """Anonymous memory (what the process allocates; the mmapped checkpoint's pages are page cache)
    grows by less than 2x the largest tensor plus one 32 MiB shard."""
    ckpt = big_checkpoint
    largest_mib = 65536 * 768 * 4 / 2**20
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(ckpt), mode, str(tmp_path / "out")],
                         check=True, capture_output=True, text=True)
    grown = float(out.stdout.strip().splitlines()[-1])
    assert grown < 2 * largest_mib + 32, f"anonymous memory grew {grown:.0f} MiB"


def test_ffn_value_layouts_agree_and_are_not_mixed_up(factory, ckpt, tmp_path, rng):
    """The hidden-major channel-mix value (sparse reads) gives the dense layout's
    logits to fp32 rounding; a tensor cache of one layout is refused by a library of the other."""
    dense = {"ffn_value_layout": "dense"}
    tokens = rng.integers(0, SHAPE["vocab_size"], 20)
    sparse_lib = factory.library(ckpt, quantization="q0f32", overrides={"ffn_value_layout": "hidden_major"})
    dense_lib = factory.library(ckpt, quantization="q0f32", overrides=dense)
    a = load_model(sparse_lib, ckpt).prefill(tokens)[0]
    b = load_model(dense_lib, ckpt).prefill(tokens)[0]
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())
    params_dir = convert(str(ckpt), "q0f32", tmp_path / "dense", overrides=dense)
    with pytest.raises(RWKVRelaxError, match="store the channel-mix value dense, the library reads it hidden_major"):
        load_model(sparse_lib, params_dir)
    np.testing.assert_array_equal(load_model(dense_lib, params_dir).prefill(tokens)[0], b)
