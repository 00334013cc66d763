"""State files: a sequence's full RNN state to safetensors and back into a fresh sequence, which
then continues exactly as the original; other models' states and broken files are refused."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from test_engine import WORLD_SHAPE, make_model_dir, raven_model, world_model

from rwkv_relax import RWKVRelaxError, load_model
from rwkv_relax.runtime.state_file import StateFileError, load_state, read_state_file, save_state
from rwkv_relax.tokenizer import default_world_vocab

TOKENS = [510, 33, 2120, 44, 1080, 9, 300, 77]


@pytest.fixture(scope="module")
def world(factory):
    model_dir, lib = world_model(factory)
    return model_dir, lib, load_model(lib, model_dir)


@pytest.fixture(scope="module")
def model(world):
    return world[2]


@pytest.fixture
def saved(model, tmp_path):
    _, state = model.prefill(TOKENS)
    path = save_state(tmp_path / "s.safetensors", model, state, tokens=TOKENS, extra={"note": "hi"})
    return path, state


def test_round_trip(model, saved):
    path, state = saved
    tensors, metadata = read_state_file(path)
    layers = {f"layers.{i}.{n}" for i in range(model.n_layer) for n in model.state_names}
    assert set(tensors) == layers | {"tokens"}
    assert metadata["model_type"] == "rwkv5" and metadata["quantization"] == "q4f16_1"
    assert metadata["n_tokens"] == str(len(TOKENS)) and metadata["note"] == "hi"
    for key in ("config_fingerprint", "params_fingerprint", "weights_fingerprint"):
        assert len(metadata[key]) == 16
    loaded = load_state(path, model)
    assert loaded.tokens == TOKENS and loaded.state.length == len(TOKENS)
    for (layer, name), value in model.state_tensors(state).items():
        got = loaded.state.layer(layer, name)
        assert got.dtype == value.dtype and np.array_equal(got, value), (layer, name)


def test_loaded_state_continues_exactly(model, saved):
    path, state = saved
    loaded = load_state(path, model).state
    nxt = [1000, 2000, 3000]
    want, want_state = model.prefill(nxt, state)
    got, got_state = model.prefill(nxt, loaded)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    for token in (5, 6, 7):  # decode steps too
        want, want_state = model.decode(token, want_state)
        got, got_state = model.decode(token, got_state)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_loaded_state_has_no_history_to_roll_back(model, saved):
    loaded = load_state(saved[0], model).state
    with pytest.raises(RWKVRelaxError, match="cannot roll back"):
        model.rollback(loaded, 1)


def test_chat_session_save_and_load(factory, world, tmp_path):
    from rwkv_relax.jit import Engine
    model_dir, lib, _ = world
    engine = Engine(model_dir, lib)
    session = engine.chat_session(seed=3, max_tokens=6)
    "".join(session.send("Hello"))
    n_tokens = session.n_tokens
    path = session.save(tmp_path / "chat.safetensors")
    conversation = json.loads(read_state_file(path)[1]["conversation"])
    assert conversation["messages"] == session.messages and conversation["conv_template"] == "rwkv-world"
    after = "".join(session.send("And then?"))
    other = engine.chat_session(seed=3, max_tokens=6)
    other.load(path)
    assert other.messages == session.messages[:2] and other.n_tokens == n_tokens
    assert "".join(other.send("And then?")) == after
    assert other.stats.prefill_tokens == session.stats.prefill_tokens  # only the new turn


# ---- refused ----------------------------------------------------------------------------------
def test_same_shapes_other_weights_are_refused(factory, world, saved):
    _, lib, _ = world
    vocab = default_world_vocab()
    other_dir = make_model_dir(factory, "rwkv5", "other-weights", "q4f16_1", "rwkv-world", vocab,
                               **{**WORLD_SHAPE, "seed": 99})
    other = load_model(lib, other_dir)  # the same library: only the weights differ
    with pytest.raises(StateFileError, match="saved from another model.*weights differs") as err:
        load_state(saved[0], other)
    assert "\n" not in str(err.value)


def test_other_architecture_is_refused(factory, saved):
    model_dir, lib = raven_model(factory)
    with pytest.raises(StateFileError, match="saved from another model .*rwkv5.*this rwkv4"):
        load_state(saved[0], load_model(lib, model_dir))


def test_tampered_config_fingerprint_is_refused(model, saved, tmp_path):
    tensors, metadata = read_state_file(saved[0])
    metadata["config_fingerprint"] = "0" * 16
    save_file(tensors, str(tmp_path / "t.safetensors"), metadata=metadata)
    with pytest.raises(StateFileError, match="model config differs"):
        load_state(tmp_path / "t.safetensors", model)


@pytest.mark.parametrize("damage", ["truncate", "text", "empty"])
def test_broken_files_are_one_line_errors(model, saved, tmp_path, damage):
    path = tmp_path / "bad.safetensors"
    data = saved[0].read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "text": b"hello, not a state\n",
                      "empty": b""}[damage])
    with pytest.raises(StateFileError, match="not a readable state file") as err:
        load_state(path, model)
    assert "\n" not in str(err.value)


def test_foreign_safetensors_and_missing_files(model, tmp_path):
    save_file({"x": np.zeros(3, np.float32)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(StateFileError, match="not an rwkv_relax state file"):
        load_state(tmp_path / "w.safetensors", model)
    with pytest.raises(StateFileError, match="does not exist"):
        load_state(tmp_path / "missing.safetensors", model)


def test_missing_layer_is_refused(model, saved, tmp_path):
    tensors = load_file(str(saved[0]))
    _, metadata = read_state_file(saved[0])
    del tensors["layers.1.att_kv"]
    save_file(tensors, str(tmp_path / "m.safetensors"), metadata=metadata)
    with pytest.raises(StateFileError, match="missing"):
        load_state(tmp_path / "m.safetensors", model)
