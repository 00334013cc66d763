"""RWKV-6 specifics (the shared contract, test_model_contract.py, runs it against the rwkv
package's RWKV class): widths read from shapes, state-tuned initial states (time_state) against
the package, saved back in their own layout and kept by convert_weight, presets, and bad input."""
from __future__ import annotations

import numpy as np
import pytest
from cli_harness import build_lib, run_build

from rwkv_relax import load_model
from rwkv_relax.config import list_presets
from rwkv_relax.errors import ConfigError
from rwkv_relax.loaders.layouts import HF_RWKV
from rwkv_relax.model_dir import convert
from rwkv_relax.pipeline import resolve_model
from rwkv_relax.runtime.time_state import TimeStateError, load_time_state, save_time_state
from rwkv_relax.testing.random_weights import write_checkpoint
from rwkv_relax.versions.rwkv6.config import RWKV6Config
from rwkv_relax.versions.rwkv6.random import TEST_SHAPE, random_tensors

SMALL = dict(n_layer=3, n_embd=128, vocab_size=1024, dim_ffn=416, dim_mix_lora=12, dim_decay_lora=20, seed=3)
WIDTHS = ("dim_mix_lora", "dim_decay_lora")


@pytest.fixture(scope="module")
def small(factory):
    ckpt = factory.checkpoint("rwkv6", "small", **SMALL)
    return ckpt, factory.library(ckpt)


@pytest.fixture(scope="module")
def tuned(factory, tmp_path_factory):
    """A state-tuned checkpoint (SMALL plus a time_state per layer) and the package on it."""
    from rwkv_relax.testing.reference import ChatRWKVProcess
    t = random_tensors(**SMALL, time_state=True)
    ckpt = write_checkpoint(t, tmp_path_factory.mktemp("tuned") / "tuned.pth")
    ref = ChatRWKVProcess(ckpt)
    yield ckpt, t, ref
    ref.close()


def test_widths_are_read_from_the_tensors(factory):
    cfg = resolve_model(str(factory.checkpoint("rwkv6", "main", **TEST_SHAPE))).config
    assert isinstance(cfg, RWKV6Config)
    for key in ("n_layer", "n_embd", "vocab_size", "head_size", "dim_ffn", *WIDTHS):
        assert getattr(cfg, key) == TEST_SHAPE[key], key
    assert (cfg.n_head, cfg.ln_x_eps, cfg.layer_norm_eps) == (3, 64e-5, 1e-5)


def test_attention_width_other_than_n_embd(tmp_path, rng):
    """dim_att != n_embd (RWKV-LM allows it): sizes come from the tensors, results from the math."""
    from rwkv_relax.registry import get_spec
    t = random_tensors(**{**SMALL, "dim_att": 192})
    ckpt = write_checkpoint(t, tmp_path / "att192.pth")
    model = load_model(build_lib(ckpt, tmp_path), ckpt)
    assert model.metadata["model_config"]["dim_att"] == 192
    tokens = rng.integers(0, 1024, 9)
    from rwkv_relax.weights import library_params, open_weights
    w = open_weights(ckpt)
    params = dict(library_params(w, w.config, model.metadata["params"], "q0f32"))
    ref = get_spec("rwkv6").reference(model.metadata["model_config"],
                                      {k: v.astype(np.float64) for k, v in params.items()})
    want = ref.forward(tokens)[0]
    np.testing.assert_allclose(model.prefill(tokens)[0], want, atol=2e-5 * np.abs(want).max(), rtol=0)


# ---- state tuning ---------------------------------------------------------------------------


def test_time_state_matches_the_package(small, tuned, rng):
    """A state-tuned checkpoint: every new sequence starts from its time_state, as the package's
    does (prefill, then decode steps with the state carried)."""
    ckpt, _, ref = tuned
    model = load_model(small[1], ckpt)
    assert model.initial_state is not None
    for length in (1, 17):
        tokens = [int(x) for x in rng.integers(0, 1024, length)]
        ours, st = model.prefill(tokens)
        theirs, rs = ref.forward(tokens, None)
        np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
        for _ in range(8):
            tok = int(rng.integers(0, 1024))
            ours, st = model.decode(tok, st)
            theirs, rs = ref.forward([tok], rs)
            np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    # and it matters: the same weights without the tuning give other logits
    plain = load_model(small[1], small[0])
    assert plain.initial_state is None
    assert np.abs(plain.prefill(tokens)[0] - model.prefill(tokens)[0]).max() > 1e-2


def test_time_state_file_round_trip(small, tuned, tmp_path, rng):
    """A standalone state-tuning file (as RWKV-PEFT writes it) loads as a sequence's state; a
    state saved back is the same tensors in the same (H, value, key) layout."""
    import torch
    ckpt, t, _ = tuned
    model = load_model(*reversed(small))  # the plain checkpoint: zeros unless told otherwise
    tuning = {f"blocks.{i}.att.time_state": torch.from_numpy(t[f"blocks.{i}.att.time_state"])
              for i in range(SMALL["n_layer"])}
    torch.save(tuning, tmp_path / "tuning.pth")
    state = load_time_state(tmp_path / "tuning.pth", model)
    tokens = rng.integers(0, 1024, 11)
    want = load_model(small[1], ckpt).prefill(tokens)[0]
    np.testing.assert_array_equal(model.prefill(tokens, state)[0], want)
    for suffix in (".safetensors", ".pth"):
        out = save_time_state(tmp_path / f"back{suffix}", model, state)
        from rwkv_relax.loaders import open_checkpoint
        back = dict(open_checkpoint(out).items())
        assert set(back) == set(tuning)
        for name, value in tuning.items():
            np.testing.assert_array_equal(back[name], value.numpy())
    model.initial_state = state  # every new sequence now starts from it
    np.testing.assert_array_equal(model.prefill(tokens)[0], want)


def test_convert_weight_keeps_the_tuning(small, tuned, tmp_path, rng):
    ckpt, _, _ = tuned
    out = convert(str(ckpt), "q0f32", tmp_path / "params")
    assert (out / "time_state.safetensors").is_file()
    tokens = rng.integers(0, 1024, 7)
    np.testing.assert_array_equal(load_model(small[1], out).prefill(tokens)[0],
                                  load_model(small[1], ckpt).prefill(tokens)[0])


def test_bad_time_state_files(small, tmp_path):
    model = load_model(small[1], small[0])
    H, N = SMALL["n_embd"] // 64, 64
    cases = {
        "shape": ({f"blocks.{i}.att.time_state": np.zeros((H, N, 32), np.float32) for i in range(3)},
                  "this model's is float32[2, 64, 64]"),
        "partial": ({"blocks.0.att.time_state": np.zeros((H, N, N), np.float32)}, "lacks 'blocks.1.att.time_state'"),
        "empty": ({"blocks.0.att.key.weight": np.zeros((2, 2), np.float32)}, "no blocks.<i>.att.time_state"),
        "nan": ({f"blocks.{i}.att.time_state": np.full((H, N, N), np.nan, np.float32) for i in range(3)}, "NaN"),
    }
    from safetensors.numpy import save_file
    for name, (tensors, match) in cases.items():
        save_file(tensors, str(tmp_path / f"{name}.safetensors"))
        with pytest.raises(TimeStateError) as err:
            load_time_state(tmp_path / f"{name}.safetensors", model)
        assert match in str(err.value) and "\n" not in str(err.value), name
    with pytest.raises(TimeStateError, match="choose|one of"):
        save_time_state(tmp_path / "x.bin", model, model.new_state())


def test_time_state_of_the_wrong_shape_in_a_checkpoint(tmp_path, capsys):
    t = random_tensors(**SMALL, time_state=True)
    t["blocks.1.att.time_state"] = t["blocks.1.att.time_state"][:, :, :32]
    msg = run_build(tmp_path, capsys, write_checkpoint(t, tmp_path / "bad.pth"))
    assert "blocks.1.att.time_state" in msg and "shape" in msg


# ---- presets and bad input --------------------------------------------------------------------


@pytest.mark.parametrize("name", [p for p in list_presets() if p.startswith("rwkv6-")])
def test_presets(name):
    cfg = resolve_model(name).config
    assert isinstance(cfg, RWKV6Config) and cfg.vocab_size == 65536
    assert cfg.dim_ffn == int(cfg.n_embd * 3.5) // 32 * 32 and cfg.ln_x_eps == 64e-5
    assert isinstance(cfg.extra["lora_widths_verified"], bool)


def test_preset_sizes():
    expected = {"1.6b": (24, 2048, 32, 64), "3b": (32, 2560, 32, 64), "7b": (32, 4096, 64, 128),
                "14b": (61, 4096, 64, 128)}
    for size, shape in expected.items():
        cfg = resolve_model(f"rwkv6-world-{size}").config
        assert (cfg.n_layer, cfg.n_embd, cfg.dim_mix_lora, cfg.dim_decay_lora) == shape, size


def test_missing_or_misshaped_lora(tmp_path, capsys):
    t = random_tensors(**SMALL)
    missing = {k: v for k, v in t.items() if k != "blocks.1.att.time_maa_w2"}
    msg = run_build(tmp_path, capsys, write_checkpoint(missing, tmp_path / "a.pth"))
    assert "missing tensor 'blocks.1.att.time_maa_w2'" in msg
    wrong = dict(t, **{"blocks.0.att.time_maa_w1": t["blocks.0.att.time_maa_w1"][:, :-3]})
    msg = run_build(tmp_path, capsys, write_checkpoint(wrong, tmp_path / "b.pth"))
    assert "time_maa_w1" in msg and "five LoRA blocks" in msg
    hf = tmp_path / "hf.safetensors"
    write_checkpoint({k: v for k, v in t.items() if k != "blocks.2.att.time_decay_w1"}, hf, HF_RWKV)
    assert "rwkv.blocks.2.attention.time_decay_w1" in run_build(tmp_path, capsys, hf)


def test_checkpoint_of_the_other_version_is_refused(factory, small):
    ckpt6, lib6 = small
    ckpt5 = factory.checkpoint("rwkv5", "small", n_layer=2, n_embd=128, vocab_size=1024, dim_ffn=448)
    for lib, ckpt, theirs, ours in ((lib6, ckpt5, "RWKV5", "RWKV6"), (factory.library(ckpt5), ckpt6, "RWKV6", "RWKV5")):
        with pytest.raises(ConfigError) as err:
            load_model(lib, ckpt)
        assert "\n" not in str(err.value) and f"is {theirs}, but the library was built for {ours}" in str(err.value)


def test_config_errors():
    base = dict(n_layer=2, n_embd=128, vocab_size=100, dim_mix_lora=8, dim_decay_lora=8)
    assert RWKV6Config(**base).dim_ffn == 448
    for bad, match in ((dict(dim_mix_lora=0), "dim_mix_lora"), (dict(head_size=48), "head_size")):
        with pytest.raises(ConfigError, match=match):
            RWKV6Config(**{**base, **bad})
