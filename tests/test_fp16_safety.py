"""fp16 safety: fp32 WKV state/decay/bonus, fp32 layers on request, rescale_every as ChatRWKV."""
from __future__ import annotations

import numpy as np
import pytest

from rwkv_relax import load_model
from rwkv_relax.loaders.layouts import HF_RWKV
from rwkv_relax.registry import get_spec
from rwkv_relax.testing.random_weights import write_checkpoint
from rwkv_relax.versions.rwkv5.random import random_tensors as rwkv5_tensors

GAIN = 400.0  # layer-0 channel-mix key gain: relu(k)^2 reaches ~1e6, past fp16's 65504
SHAPES = {"rwkv5": dict(n_layer=3, n_embd=128, vocab_size=1024, seed=4),
          "rwkv6": dict(n_layer=2, n_embd=128, vocab_size=1024, dim_mix_lora=16, dim_decay_lora=24, seed=4),
          "rwkv7": dict(n_layer=2, n_embd=128, vocab_size=1024, dim_decay_lora=16, dim_a_lora=24,
                        dim_v_lora=8, dim_gate_lora=32, seed=4)}
# what each version keeps in fp32 in an fp16 model: decay, bonus / rates, ln_x; and its WKV state
FP32_PARAMS = {"rwkv5": ("att.time_decay", "att.time_faaaa", "att.ln_x_weight", "att.ln_x_bias"),
               "rwkv6": ("att.time_decay", "att.time_faaaa", "att.ln_x_weight", "att.ln_x_bias"),
               "rwkv7": ("att.w0", "att.a0", "att.k_k", "att.k_a", "att.r_k", "att.ln_x_weight", "att.ln_x_bias")}


@pytest.fixture(scope="module", params=list(SHAPES))
def overflow_checkpoint(request, tmp_path_factory):
    """A model whose layer 0 overflows fp16 when computed naively (as early layers of small
    RWKV models do): huge channel-mix keys, with value weights scaled down so that the fp32
    result is ordinary."""
    t = get_spec(request.param).random_tensors(**SHAPES[request.param])
    t["blocks.0.ffn.key.weight"] *= GAIN
    t["blocks.0.ffn.value.weight"] /= GAIN * GAIN
    return write_checkpoint(t, tmp_path_factory.mktemp("ovf") / f"{request.param}-overflow.pth"), t


def test_naive_fp16_overflows_in_layer_0(overflow_checkpoint):
    """The naive path: layer 0's squared keys computed in fp16 are inf."""
    from rwkv_relax.reference import layer_norm
    _, t = overflow_checkpoint
    emb = t["emb.weight"][:16]
    x = layer_norm(layer_norm(emb, t["blocks.0.ln0.weight"], t["blocks.0.ln0.bias"], 1e-5),
                   t["blocks.0.ln2.weight"], t["blocks.0.ln2.bias"], 1e-5)
    k = x.astype(np.float16) @ t["blocks.0.ffn.key.weight"].T.astype(np.float16)
    with np.errstate(over="ignore"):
        assert not np.isfinite(np.square(np.maximum(k, 0))).all()


def test_fp32_layers_keep_q0f16_finite_and_close(factory, overflow_checkpoint, rng):
    ckpt, _ = overflow_checkpoint
    tokens = rng.integers(0, 1024, 37)
    ref = load_model(factory.library(ckpt, quantization="q0f32"), ckpt).prefill(tokens)[0]
    naive = load_model(factory.library(ckpt, quantization="q0f16"), ckpt).prefill(tokens)[0]
    assert not np.isfinite(naive).all()  # the compiled model without fp32 layers does overflow
    safe_lib = factory.library(ckpt, quantization="q0f16", overrides={"fp32_layers": [0]})
    safe = load_model(safe_lib, ckpt)
    out = safe.prefill(tokens)[0]
    assert np.isfinite(out).all()
    assert np.abs(out - ref).max() <= 0.02 * np.abs(ref).max()
    params = {p["name"]: p["dtype"] for p in safe.metadata["params"]}
    assert params["blocks.0.ffn.key.weight"] == "float32" and params["blocks.1.ffn.key.weight"] == "float16"


def test_state_decay_bonus_stay_fp32_in_fp16_models(overflow_checkpoint):
    """The exported module's parameter and state dtypes, the metadata a library carries (the
    q0f16 library of the test above loads and runs with them)."""
    from rwkv_relax.pipeline import export, resolve_model
    ckpt, _ = overflow_checkpoint
    for mode in ("q0f16", "q4f16_1"):
        md = export(resolve_model(str(ckpt)), mode)[1]
        dtypes = {p["name"]: p["dtype"] for p in md["params"]}
        for i in range(md["num_hidden_layers"]):
            for name in FP32_PARAMS[md["model_type"]]:
                assert dtypes[f"blocks.{i}.{name}"] == "float32", name
        state = {s["name"]: s["dtype"] for s in md["state"]}
        assert state["att_kv"] == "float32" and state["att_x"] == "float16"


@pytest.fixture
def reference_with_rescale(monkeypatch):
    def make(pth, every):
        monkeypatch.setenv("RWKV_RESCALE_LAYER", str(every))  # ChatRWKV's own switch
        from rwkv_relax.testing.reference import ChatRWKVProcess
        return ChatRWKVProcess(pth)
    return make


@pytest.mark.parametrize("arch,shape", [("rwkv5", {}), ("rwkv6", dict(dim_mix_lora=8, dim_decay_lora=16))])
def test_rescale_every_matches_chatrwkv(factory, rng, reference_with_rescale, arch, shape):
    """rescale_every = 2 halves weights at load and the residual at run time exactly where
    ChatRWKV's RESCALE_LAYER does."""
    ckpt = factory.checkpoint(arch, "rescale", n_layer=5, n_embd=128, vocab_size=1024, seed=8, **shape)
    ours = load_model(factory.library(ckpt, overrides={"rescale_every": 2}), ckpt)
    ref = reference_with_rescale(ckpt, 2)
    tokens = rng.integers(0, 1024, 25)
    np.testing.assert_allclose(ours.prefill(tokens)[0], ref.forward(tokens)[0],
                               atol=1e-4, rtol=0)
    assert ours.metadata["model_config"]["rescale_every"] == 2


def test_rescale_every_from_hf_config(tmp_path):
    import json

    from rwkv_relax.pipeline import resolve_model
    folder = tmp_path / "hf"
    write_checkpoint(rwkv5_tensors(n_layer=2, n_embd=128, vocab_size=1024), folder / "model.safetensors", HF_RWKV)
    (folder / "config.json").write_text(json.dumps({"rescale_every": 6}))
    assert resolve_model(str(folder)).config.rescale_every == 6
