"""Bad input gets one line that names the cause, exit status 2, and no artifact."""
from __future__ import annotations

import collections

import pytest
import torch
from cli_harness import run_build

from rwkv_relax import build as build_cli
from rwkv_relax.loaders.layouts import HF_RWKV
from rwkv_relax.testing.random_weights import write_checkpoint
from rwkv_relax.versions.rwkv5.random import random_tensors as rwkv5_tensors

SMALL = dict(n_layer=2, n_embd=128, vocab_size=1024, dim_ffn=448)


@pytest.fixture
def good(tmp_path):
    return rwkv5_tensors(**SMALL)


def test_truncated_pth(tmp_path, capsys, good):
    p = write_checkpoint(good, tmp_path / "m.pth")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    msg = run_build(tmp_path, capsys, p)
    assert "truncated" in msg and "m.pth" in msg


def test_truncated_safetensors(tmp_path, capsys, good):
    p = write_checkpoint(good, tmp_path / "m.safetensors", layout=HF_RWKV)
    data = p.read_bytes()
    p.write_bytes(data[:-1000])
    assert "truncated" in run_build(tmp_path, capsys, p)


def test_missing_tensor(tmp_path, capsys, good):
    del good["blocks.1.att.gate.weight"]
    msg = run_build(tmp_path, capsys, write_checkpoint(good, tmp_path / "m.pth"))
    assert "missing tensor 'blocks.1.att.gate.weight'" in msg


def test_unexpected_tensor(tmp_path, capsys, good):
    good["blocks.0.att.extra_thing"] = good["blocks.0.ln1.weight"]
    msg = run_build(tmp_path, capsys, write_checkpoint(good, tmp_path / "m.pth"))
    assert "unexpected tensor 'blocks.0.att.extra_thing'" in msg


def test_wrong_shape(tmp_path, capsys, good):
    good["blocks.1.ffn.key.weight"] = good["blocks.1.ffn.key.weight"][:-32]
    msg = run_build(tmp_path, capsys, write_checkpoint(good, tmp_path / "m.pth"))
    assert "blocks.1.ffn.key.weight" in msg and "shape" in msg


class NotATensor:  # pickled by reference: unpickling it would import and run this module
    pass


def test_pickle_with_objects_is_refused(tmp_path, capsys, good):
    state = {k: torch.from_numpy(v) for k, v in good.items()}
    state["evil"] = NotATensor()
    p = tmp_path / "m.pth"
    torch.save(state, p)
    msg = run_build(tmp_path, capsys, p)
    assert "pickled objects other than tensors" in msg


def test_pickle_with_plain_non_tensor_entry(tmp_path, capsys, good):
    state = collections.OrderedDict((k, torch.from_numpy(v)) for k, v in good.items())
    state["note"] = "hello"
    p = tmp_path / "m.pth"
    torch.save(state, p)
    assert "'note' is a str, not a tensor" in run_build(tmp_path, capsys, p)


def test_nan_weights(tmp_path, capsys, good):
    from rwkv_relax import load_model
    from rwkv_relax.errors import CheckpointError
    good["blocks.0.att.key.weight"][3, 4] = float("nan")
    p = write_checkpoint(good, tmp_path / "m.pth")
    # the shape-only build succeeds; loading the weights names the tensor
    lib = tmp_path / "lib.so"
    assert build_cli.main(["--model", str(p), "-o", str(lib)]) == 0
    with pytest.raises(CheckpointError, match="blocks.0.att.key.weight.*NaN"):
        load_model(lib, p)


def test_unknown_preset(tmp_path, capsys):
    msg = run_build(tmp_path, capsys, "rwkv5-world-9b")
    assert "unknown preset 'rwkv5-world-9b'" in msg and "rwkv5-world-1.5b" in msg


def test_unknown_target(tmp_path, capsys):
    msg = run_build(tmp_path, capsys, "rwkv5-world-0.1b", "--target", "tpu")
    assert "unknown target 'tpu'" in msg and "llvm" in msg


def test_mode_the_target_cannot_bind(tmp_path, capsys):
    """WebGPU binds each weight whole and guarantees 128 MiB per binding: fp32 World 0.1B has a
    65536 x 768 fp32 embedding (192 MiB), so q0f32 cannot run there."""
    msg = run_build(tmp_path, capsys, "rwkv5-world-0.1b", "--target", "webgpu", "--quantization", "q0f32")
    assert "webgpu cannot run q0f32" in msg and "embeddings.weight is 192 MiB" in msg and "q4f16_1" in msg


@pytest.mark.parametrize("model,mode,fits", [
    ("rwkv5-world-0.1b", "q0f16", True),  # 96 MiB
    ("rwkv5-world-1.5b", "q4f16_1", True),  # 32 MiB codes per table
    ("rwkv5-world-1.5b", "q0f16", False),  # 256 MiB
])
def test_webgpu_binding_limit_is_per_tensor(model, mode, fits):
    from rwkv_relax.errors import ConfigError
    from rwkv_relax.pipeline import export, resolve_model
    from rwkv_relax.targets import get_target
    params = export(resolve_model(model), mode)[1]["params"]
    if fits:
        get_target("webgpu").check_params(params, mode)
        get_target("llvm").check_params(params, mode)
    else:
        with pytest.raises(ConfigError, match="over the 128 MiB"):
            get_target("webgpu").check_params(params, mode)
        get_target("cuda").check_params(params, mode)  # no such limit there


def test_not_an_rwkv_checkpoint(tmp_path, capsys):
    p = tmp_path / "m.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, p)
    assert "not an RWKV checkpoint" in run_build(tmp_path, capsys, p)


def test_other_rwkv_versions_are_named(tmp_path, capsys, good):
    mixed = dict(good)  # an RWKV-5 file with one RWKV-6 tensor: named, not half-loaded
    mixed["blocks.0.att.time_maa_x"] = good["blocks.0.att.time_mix_k"]
    assert "unexpected tensor 'blocks.0.att.time_maa_x'" in run_build(tmp_path, capsys,
                                                                      write_checkpoint(mixed, tmp_path / "m6.pth"))
    v51 = dict(good)
    for i in range(SMALL["n_layer"]):
        v51[f"blocks.{i}.att.time_decay"] = good[f"blocks.{i}.att.time_decay"].reshape(-1, 1)
    assert "RWKV-5.1" in run_build(tmp_path, capsys, write_checkpoint(v51, tmp_path / "m51.pth"))


def test_library_refuses_weights_of_another_shape(factory, tmp_path):
    from rwkv_relax import RWKVRelaxError, load_model
    lib = factory.library(factory.checkpoint("rwkv5", "small", **SMALL))
    other = write_checkpoint(rwkv5_tensors(**{**SMALL, "n_embd": 192, "dim_ffn": 672}), tmp_path / "o.pth")
    with pytest.raises(RWKVRelaxError, match="n_embd=192 but the library was built for n_embd=128"):
        load_model(lib, other)


def test_runtime_rejects_bad_tokens(factory):
    from rwkv_relax import RWKVRelaxError, load_model
    ckpt = factory.checkpoint("rwkv5", "small", **SMALL)
    model = load_model(factory.library(ckpt), ckpt)
    with pytest.raises(RWKVRelaxError, match="outside the vocabulary"):
        model.prefill([1, SMALL["vocab_size"]])
    with pytest.raises(RWKVRelaxError, match="empty"):
        model.prefill([])


# ---- the three defects of the fuzzing issue, pinned -------------------------------------------


def test_config_field_of_the_wrong_type_is_named(tmp_path, capsys):
    import json
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "rwkv5", "n_layer": "three", "n_embd": 128, "vocab_size": 1024}))
    msg = run_build(tmp_path, capsys, cfg)
    assert "n_layer must be an integer, got 'three'" in msg and "<" not in msg


def test_integer_weight_is_refused(tmp_path, capsys, good):
    state = {k: torch.from_numpy(v) for k, v in good.items()}
    state["blocks.0.att.key.weight"] = state["blocks.0.att.key.weight"].to(torch.int32)
    torch.save(state, tmp_path / "int.pth")
    msg = run_build(tmp_path, capsys, tmp_path / "int.pth")
    assert "'blocks.0.att.key.weight' is int32" in msg and "floating point" in msg
    from rwkv_relax import convert_weight
    assert convert_weight.main([str(tmp_path / "int.pth"), "--quantization", "q0f32", "-o", str(tmp_path / "p")]) == 2
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("head,what", [(b"", "is empty"), (b"GGUF\x03\x00\x00\x00", "GGUF"),
                                       (None, "not a zip archive (torch.save), not a pickle")])
def test_file_kind_is_said_from_the_bytes(tmp_path, capsys, head, what):
    import numpy as np
    p = tmp_path / "m.pth"
    p.write_bytes(np.random.default_rng(0).bytes(5000) if head is None else head + b"\0" * (64 if head else 0))
    assert what in run_build(tmp_path, capsys, p)


def test_misnamed_safetensors_still_loads(tmp_path, good):
    """Loaders are chosen by the bytes: a safetensors file named .pth reads as what it is."""
    from rwkv_relax.loaders import open_checkpoint
    p = write_checkpoint(good, tmp_path / "m.safetensors")
    renamed = p.rename(tmp_path / "m.pth")
    assert open_checkpoint(renamed).shape("emb.weight") == good["emb.weight"].shape


@pytest.mark.parametrize("extra,says", [
    (("--target", "cuda"), "--cpu-int8-activations is an llvm option"),
    (("--quantization", "q0f16"), "q0f16 has none"),
    (("--quantization", "q4f16_1", "--chip", "x86-64"), "needs an x86 CPU with AVX2 (llvm -mcpu x86-64 has none)"),
])
def test_int8_activations_where_they_cannot_apply(tmp_path, capsys, extra, says):
    msg = run_build(tmp_path, capsys, "rwkv5-world-0.1b", "--cpu-int8-activations", *extra)
    assert says in msg, msg
