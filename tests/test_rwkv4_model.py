"""RWKV-4 specifics: against transformers' RwkvForCausalLM (besides the `rwkv` package of the
shared contract, ``test_model_contract.py``), Hugging Face rescaling, the WKV4 max trick, presets,
building from a config through the CLI, version mismatches.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from test_model_contract import TOL, ChatRWKV, RNNUnderTest

from rwkv_relax import build as build_cli
from rwkv_relax import load_model
from rwkv_relax.config import list_presets
from rwkv_relax.errors import ConfigError
from rwkv_relax.loaders.layouts import HF_RWKV
from rwkv_relax.pipeline import resolve_model
from rwkv_relax.testing.random_weights import write_checkpoint, write_hf_folder
from rwkv_relax.versions.rwkv4.config import RWKV4Config
from rwkv_relax.versions.rwkv4.random import STATE_ATOL
from rwkv_relax.versions.rwkv4.random import TEST_SHAPE as SHAPE
from rwkv_relax.versions.rwkv4.random import random_tensors as rwkv4_tensors

V5_SMALL = dict(n_layer=2, n_embd=128, vocab_size=1024, dim_ffn=448)  # as tests/test_bad_inputs.py
EXP_LIMIT = 88.72  # float32 exp overflows past this


class Transformers:
    """transformers' ``RwkvForCausalLM`` stepped like our runtime: ``use_cache=True`` and the state
    fed back, logits of the last position.

    transformers sizes a fresh state's aa/bb/pp by hidden_size, which breaks when dim_att !=
    n_embd, so a correctly sized fresh state is passed in (pp = -1e30, as transformers sets it).
    """

    name = "transformers"
    SLOTS = {"ffn_x": 0, "att_x": 1, "att_aa": 2, "att_bb": 3, "att_pp": 4}  # its state list

    def __init__(self, folder):
        self.model = transformers.RwkvForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        cfg = self.model.config
        self.sizes = [cfg.hidden_size] * 2 + [cfg.attention_hidden_size] * 3
        self.n_layer = cfg.num_hidden_layers

    def fresh_state(self):
        state = [torch.zeros(1, n, self.n_layer) for n in self.sizes]
        state[self.SLOTS["att_pp"]] -= 1e30
        return state

    def forward(self, tokens, state=None):
        state = self.fresh_state() if state is None else [s.clone() for s in state]  # it writes in place
        ids = torch.from_numpy(np.asarray(tokens, dtype=np.int64).reshape(1, -1))
        with torch.no_grad():
            out = self.model(ids, state=state, use_cache=True)
        return out.logits[0, -1].numpy(), out.state

    def layer_state(self, state, layer: int, name: str) -> np.ndarray:
        return state[self.SLOTS[name]][0, :, layer].numpy()


def hf_config(shape: dict, rescale_every: int) -> dict:
    """transformers' own config.json for these sizes."""
    return transformers.RwkvConfig(
        vocab_size=shape["vocab_size"], hidden_size=shape["n_embd"], num_hidden_layers=shape["n_layer"],
        attention_hidden_size=shape["dim_att"], intermediate_size=shape["dim_ffn"],
        context_length=1 << 16, rescale_every=rescale_every, tie_word_embeddings=False).to_dict()


@pytest.fixture(scope="module")
def rnn(factory):
    ckpt = factory.checkpoint("rwkv4", "main", **SHAPE)
    library = factory.library(ckpt)
    model = load_model(library, ckpt)
    # the .pth has no config: rescale_every 0, so transformers must not rescale either
    folder = write_hf_folder(rwkv4_tensors(**SHAPE), factory.root / "rwkv4-main-hf-folder", hf_config(SHAPE, 0),
                             HF_RWKV)
    return RNNUnderTest("rwkv4", SHAPE, library, model, [Transformers(folder)], STATE_ATOL)


@pytest.mark.parametrize("length", [1, 17, 300])
def test_prefill_then_decode_match_transformers(rnn, rng, length):
    """The contract's reference comparison, against transformers."""
    ref, model = rnn.references[0], rnn.model
    tokens = rng.integers(0, SHAPE["vocab_size"], length)
    ours, state = model.prefill(tokens)
    theirs, rstate = ref.forward(tokens)
    np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0)
    for token in rng.integers(0, SHAPE["vocab_size"], 16):
        ours, state = model.decode(int(token), state)
        theirs, rstate = ref.forward([token], rstate)
        np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0)
    for layer in range(model.n_layer):
        for name in model.state_names:
            np.testing.assert_allclose(state.layer(layer, name), ref.layer_state(rstate, layer, name),
                                       atol=rnn.state_atol[name], rtol=0, err_msg=f"layer {layer} {name}")


def test_fresh_state_is_chatrwkvs(rnn):
    """aa = bb = 0 and pp = -1e30 (rwkv/model.py: ``zeros - 1e30``), token-shift rows 0."""
    state = rnn.model.new_state()
    for layer in range(SHAPE["n_layer"]):
        for name in rnn.model.state_names:
            fill = np.float32(-1e30) if name == "att_pp" else 0.0
            np.testing.assert_array_equal(state.layer(layer, name), fill, err_msg=name)
    assert state.layer(0, "att_pp").shape == (SHAPE["dim_att"],)


def test_keys_past_the_exp_limit_stay_finite(rnn, rng):
    """The random weights reach keys beyond float32's exp range (where a / b without the max
    trick is inf / inf); the contract tests show the logits still match there."""
    logits, state = rnn.model.prefill(rng.integers(0, SHAPE["vocab_size"], 300))
    assert np.isfinite(logits).all()
    pp = max(state.layer(i, "att_pp").max() for i in range(SHAPE["n_layer"]))
    assert EXP_LIMIT < pp < 1e4, pp  # pp is the running max of the keys


def test_hf_folder_rescale_matches_transformers(factory, rng):
    """A converted HF folder says rescale_every (transformers' default is 6); transformers halves
    the residual at inference, so the library must read and apply it to give its logits."""
    shape = dict(SHAPE, seed=11)
    folder = write_hf_folder(rwkv4_tensors(**shape), factory.root / "rwkv4-rescale2-hf-folder",
                             hf_config(shape, rescale_every=2), HF_RWKV)
    model = load_model(factory.library(folder), folder)
    assert model.metadata["model_type"] == "rwkv4"
    assert model.metadata["model_config"]["rescale_every"] == 2
    ref = Transformers(folder)
    tokens = rng.integers(0, shape["vocab_size"], 40)
    ours, state = model.prefill(tokens)
    theirs, rstate = ref.forward(tokens)
    assert ref.model.rwkv.layers_are_rescaled
    np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0)
    for token in rng.integers(0, shape["vocab_size"], 16):
        ours, state = model.decode(int(token), state)
        theirs, rstate = ref.forward([token], rstate)
        np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0)


def test_cli_builds_from_config_json(tmp_path, capsys, rng):
    """``python -m rwkv_relax.build --model config.json``: no weights at build time; released
    RWKV-4 sizes (dim_att = n_embd, dim_ffn = 4 n_embd), checked against ChatRWKV's att_seq."""
    config = tmp_path / "rwkv4-small.json"
    config.write_text(json.dumps({"model_type": "rwkv4", "n_layer": 2, "n_embd": 80, "vocab_size": 300}))
    lib = tmp_path / "rwkv4-small.so"
    assert build_cli.main(["--model", str(config), "--target", "llvm", "-o", str(lib)]) == 0
    assert f"wrote {lib}" in capsys.readouterr().out
    ckpt = write_checkpoint(rwkv4_tensors(n_layer=2, n_embd=80, vocab_size=300, seed=7), tmp_path / "w.pth")
    model = load_model(lib, ckpt)
    assert model.metadata["model_config"]["dim_att"] == 80 and model.metadata["model_config"]["dim_ffn"] == 320
    ref = ChatRWKV(ckpt, model.state_names)  # dim_att = n_embd: the package's att_seq runs it
    tokens = rng.integers(0, 300, 45)
    np.testing.assert_allclose(model.prefill(tokens)[0], ref.forward(tokens)[0], atol=TOL, rtol=0)


def test_checkpoint_of_the_other_version_is_refused(factory, rnn, tmp_path):
    v5_ckpt = factory.checkpoint("rwkv5", "small", **V5_SMALL)
    v4_ckpt = factory.checkpoint("rwkv4", "main", **SHAPE)
    for lib, ckpt, theirs, ours in ((rnn.library, v5_ckpt, "RWKV5", "RWKV4"),
                                    (factory.library(v5_ckpt), v4_ckpt, "RWKV4", "RWKV5")):
        with pytest.raises(ConfigError) as err:
            load_model(lib, ckpt)
        msg = str(err.value)
        assert "\n" not in msg
        assert f"is {theirs}, but the library was built for {ours}" in msg and str(ckpt) in msg


@pytest.mark.parametrize("name", [p for p in list_presets() if p.startswith("rwkv4-")])
def test_presets(name):
    cfg = resolve_model(name).config
    family = name.split("-")[1]
    assert isinstance(cfg, RWKV4Config) and family in ("pile", "raven", "world")
    assert cfg.dim_att == cfg.n_embd and cfg.dim_ffn == 4 * cfg.n_embd
    world = family == "world"
    assert cfg.vocab_size == (65536 if world else 50277)
    assert cfg.extra["tokenizer"] == ("rwkv_vocab_v20230424" if world else "20B_tokenizer")
    assert cfg.extra["name"] == name


def test_preset_sizes():
    expected = {"rwkv4-pile-169m": (12, 768), "rwkv4-pile-430m": (24, 1024), "rwkv4-raven-14b": (40, 5120),
                "rwkv4-world-0.1b": (12, 768), "rwkv4-world-7b": (32, 4096)}
    for name, shape in expected.items():
        cfg = resolve_model(name).config
        assert (cfg.n_layer, cfg.n_embd) == shape, name
    assert len([p for p in list_presets() if p.startswith("rwkv4-")]) == 15


def test_config_defaults_and_errors():
    cfg = RWKV4Config(n_layer=2, n_embd=64, vocab_size=100)
    assert (cfg.dim_att, cfg.dim_ffn, cfg.rescale_every, cfg.layer_norm_eps) == (64, 256, 0, 1e-5)
    for bad in (dict(n_layer=0), dict(dim_att=-1), dict(dtype="bfloat16")):
        with pytest.raises(ConfigError):
            RWKV4Config(**{"n_layer": 2, "n_embd": 64, "vocab_size": 100, **bad})
    with pytest.raises(ConfigError, match="model_type 'rwkv5'"):
        RWKV4Config.from_dict({"model_type": "rwkv5", "n_layer": 2, "n_embd": 64})
