"""RWKV-7 specifics (the shared contract, test_model_contract.py, runs it against the rwkv
package's RWKV_x070): widths read from shapes, the flash-linear-attention and remote-code
layouts, layer 0's unused value-residual LoRA, presets, and bad input."""
from __future__ import annotations

import numpy as np
import pytest
from cli_harness import build_lib, run_build

from rwkv_relax import load_model
from rwkv_relax.config import list_presets
from rwkv_relax.errors import ConfigError
from rwkv_relax.pipeline import resolve_model
from rwkv_relax.testing.random_weights import write_checkpoint
from rwkv_relax.versions.rwkv7.config import RWKV7Config
from rwkv_relax.versions.rwkv7.names import FLA
from rwkv_relax.versions.rwkv7.random import TEST_SHAPE, random_tensors

SMALL = dict(n_layer=3, n_embd=128, vocab_size=1024, dim_ffn=384, dim_decay_lora=24, dim_a_lora=40,
             dim_v_lora=16, dim_gate_lora=48, seed=3)
WIDTHS = ("dim_decay_lora", "dim_a_lora", "dim_v_lora", "dim_gate_lora")


@pytest.fixture(scope="module")
def small(factory):
    ckpt = factory.checkpoint("rwkv7", "small", **SMALL)
    return ckpt, factory.library(ckpt)


def test_widths_are_read_from_the_tensors(factory):
    cfg = resolve_model(str(factory.checkpoint("rwkv7", "main", **TEST_SHAPE))).config
    assert isinstance(cfg, RWKV7Config)
    for key in ("n_layer", "n_embd", "vocab_size", "head_size", "dim_ffn", *WIDTHS):
        assert getattr(cfg, key) == TEST_SHAPE[key], key
    assert (cfg.n_head, cfg.ln_x_eps, cfg.layer_norm_eps, cfg.rescale_every) == (3, 64e-5, 1e-5, 0)


@pytest.mark.parametrize("head_size,n_embd", [(32, 160), (128, 256)])
def test_head_size_is_read_from_the_checkpoint_and_matches_the_reference(factory, rng, head_size, n_embd):
    """The released models have 64-wide heads; the reference takes the width from r_k's shape, and
    so must we (the WKV7 scan, GroupNorm groups, the per-head L2 norm and bonus all follow it)."""
    from rwkv_relax.testing.reference import ChatRWKVProcess
    shape = dict(n_layer=2, n_embd=n_embd, vocab_size=611, head_size=head_size, dim_ffn=3 * n_embd + 32,
                 dim_decay_lora=24, dim_a_lora=40, dim_v_lora=16, dim_gate_lora=56, seed=head_size)
    ckpt = factory.checkpoint("rwkv7", f"h{head_size}", **shape)
    model = load_model(factory.library(ckpt), ckpt)
    assert model.metadata["model_config"]["head_size"] == head_size
    tokens = [int(t) for t in rng.integers(0, 611, 19)]
    ref = ChatRWKVProcess(ckpt, v7=True)
    try:
        ours, state = model.prefill(tokens)
        theirs, rstate = ref.forward(tokens)
        np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
        for token in tokens[:4]:
            ours, state = model.decode(token, state)
            theirs, rstate = ref.forward([token], rstate)
            np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    finally:
        ref.close()


def test_one_layer_model_needs_no_value_lora(tmp_path, rng):
    t = random_tensors(**{**SMALL, "n_layer": 1})
    for name in ("v0", "v1", "v2"):
        del t[f"blocks.0.att.{name}"]
    ckpt = write_checkpoint(t, tmp_path / "one.pth")
    model = load_model(build_lib(ckpt, tmp_path), ckpt)
    assert model.metadata["model_config"]["dim_v_lora"] == 0
    assert np.isfinite(model.prefill(rng.integers(0, 1024, 5))[0]).all()


def test_layer0_value_lora_absent_or_dummy_gives_same_logits(small, tmp_path, rng):
    """fla checkpoints drop layer 0's v0/v1/v2; GGUF conversions write dummies of another shape;
    BlinkDL keeps them. None is ever read."""
    ckpt, lib = small
    tokens = rng.integers(0, SMALL["vocab_size"], 23)
    want = load_model(lib, ckpt).prefill(tokens)[0]
    t = random_tensors(**SMALL)
    fla = {k: v for k, v in t.items() if k not in ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")}
    dummy = dict(t, **{"blocks.0.att.v1": t["blocks.0.att.a1"].copy(), "blocks.0.att.v2": t["blocks.0.att.a2"].copy()})
    for name, tensors, layout in (("fla", fla, FLA), ("dummy", dummy, None)):
        path = tmp_path / f"{name}.safetensors"
        write_checkpoint(tensors, path, layout) if layout else write_checkpoint(tensors, path)
        np.testing.assert_array_equal(load_model(lib, path).prefill(tokens)[0], want, err_msg=name)


def test_fla_file_names_and_shapes(tmp_path):
    """The fla layout as flash-linear-attention writes it: LoRA factors transposed (Linear
    weights), w0 / a0 / v0 as the up-projections' biases, flat vectors."""
    from safetensors import safe_open
    path = write_checkpoint(random_tensors(**SMALL), tmp_path / "fla.safetensors", FLA)
    with safe_open(str(path), "np") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    C, Dw = SMALL["n_embd"], SMALL["dim_decay_lora"]
    assert shapes["model.layers.1.attn.w_lora.lora.0.weight"] == (Dw, C)
    assert shapes["model.layers.1.attn.w_lora.lora.2.weight"] == (C, Dw)
    assert shapes["model.layers.1.attn.w_lora.lora.2.bias"] == (C,)
    assert "model.layers.1.attn.g_lora.lora.2.bias" not in shapes
    assert shapes["model.layers.0.attn.r_proj.weight"] == (C, C) and shapes["lm_head.weight"] == (1024, C)


@pytest.mark.parametrize("name", [p for p in list_presets() if p.startswith("rwkv7-")])
def test_presets(name):
    cfg = resolve_model(name).config
    assert isinstance(cfg, RWKV7Config) and cfg.vocab_size == 65536 and cfg.dim_ffn == 4 * cfg.n_embd
    assert all(getattr(cfg, w) > 0 for w in WIDTHS)
    assert isinstance(cfg.extra["lora_widths_verified"], bool)


def test_preset_sizes():
    expected = {"0.1b": (12, 768), "0.4b": (24, 1024), "1.5b": (24, 2048), "2.9b": (32, 2560),
                "7.2b": (32, 4096), "13.3b": (61, 4096)}
    for size, shape in expected.items():
        cfg = resolve_model(f"rwkv7-world-{size}").config
        assert (cfg.n_layer, cfg.n_embd) == shape, size
    assert resolve_model("rwkv7-world-1.5b").config.dim_gate_lora == 256


def test_lora_tensor_missing_or_misshaped(tmp_path, capsys):
    t = random_tensors(**SMALL)
    missing = {k: v for k, v in t.items() if k != "blocks.2.att.a2"}
    msg = run_build(tmp_path, capsys, write_checkpoint(missing, tmp_path / "a.pth"))
    assert "missing tensor 'blocks.2.att.a2'" in msg
    wrong = dict(t, **{"blocks.1.att.g1": t["blocks.1.att.g1"][:, :8]})
    msg = run_build(tmp_path, capsys, write_checkpoint(wrong, tmp_path / "b.pth"))
    assert "blocks.1.att.g1" in msg and "shape" in msg


@pytest.mark.parametrize("extra,what", [
    ({"blocks.0.ffn.s_emb.weight": np.zeros((1024, 1024), np.float32)}, "DeepEmbed"),
    ({"blocks.0.att.qkv.weight": np.zeros((384, 128), np.float32)}, "DEA"),
    ({"model.layers.0.mlp.gate_proj.weight": np.zeros((8, 128), np.float32)}, "hybrid"),
])
def test_variants_are_refused_by_name(tmp_path, capsys, extra, what):
    t = dict(random_tensors(**SMALL), **extra)
    assert what in run_build(tmp_path, capsys, write_checkpoint(t, tmp_path / "v.pth"))


def test_checkpoint_of_the_other_version_is_refused(factory, small):
    ckpt7, lib7 = small
    ckpt5 = factory.checkpoint("rwkv5", "small", n_layer=2, n_embd=128, vocab_size=1024, dim_ffn=448)
    for lib, ckpt, theirs, ours in ((lib7, ckpt5, "RWKV5", "RWKV7"), (factory.library(ckpt5), ckpt7, "RWKV7", "RWKV5")):
        with pytest.raises(ConfigError) as err:
            load_model(lib, ckpt)
        assert "\n" not in str(err.value) and f"is {theirs}, but the library was built for {ours}" in str(err.value)


def test_config_errors():
    base = dict(n_layer=2, n_embd=128, vocab_size=100, dim_decay_lora=8, dim_a_lora=8, dim_v_lora=8,
                dim_gate_lora=8)
    assert RWKV7Config(**base).dim_ffn == 512
    for bad, match in ((dict(dim_a_lora=0), "dim_a_lora"), (dict(rescale_every=2), "rescale_every"),
                       (dict(head_size=48), "head_size"), (dict(dim_att=64), "dim_att")):
        with pytest.raises(ConfigError, match=match):
            RWKV7Config(**{**base, **bad})
