"""tools/dump_intermediate.py: per-layer comparison of our compiled model with the float64 numpy
model, stopping at exactly the layer and sub-step where they part.

The tool only finds something when the two sides differ, so each failing case differs on one side
only: either the reference reads a clean checkpoint while our model reads one corrupted at layer k
(--reference-checkpoint), or layer k overflows fp16 in the compiled model while the float64
reference on the same weights does not.
"""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rwkv_relax.testing.random_weights import write_checkpoint
from rwkv_relax.versions.rwkv5.random import random_tensors as rwkv5_tensors

TOOL = Path(__file__).resolve().parents[1] / "tools" / "dump_intermediate.py"
SHAPE = dict(n_layer=3, n_embd=128, vocab_size=512, head_size=64, seed=21)
MODES = ["q0f32", "q0f16", "q4f16_1"]
OVERFLOW_GAIN = 400.0  # channel-mix key gain: relu(k)^2 reaches ~1e6, past fp16's 65504


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("dump_intermediate", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Checkpoints (clean, corrupted at layer k, overflowing at layer k) and a shared cache of
    debug builds: one build per quantization serves every checkpoint of this shape."""
    root = tmp_path_factory.mktemp("dump")
    paths = {"clean": write_checkpoint(rwkv5_tensors(**SHAPE), root / "clean.pth")}
    for k in (0, 2):
        t = rwkv5_tensors(**SHAPE)
        t[f"blocks.{k}.att.output.weight"] *= 1.5  # a wrong time-mix output at layer k only
        paths[f"corrupt{k}"] = write_checkpoint(t, root / f"corrupt{k}.pth")
        t = rwkv5_tensors(**SHAPE)
        # the float64 result stays ordinary (value scaled down by gain^2); fp16 keys squared do not
        t[f"blocks.{k}.ffn.key.weight"] *= OVERFLOW_GAIN
        t[f"blocks.{k}.ffn.value.weight"] /= OVERFLOW_GAIN ** 2
        paths[f"overflow{k}"] = write_checkpoint(t, root / f"overflow{k}.pth")
    paths["cache"] = root / "cache"
    return paths


def run_tool(tool, capsys, *args) -> tuple[int, str]:
    code = tool.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def rows(out: str) -> list[tuple[str, str, str]]:
    """(layer, sub-step, ok/FAIL) of every printed table row."""
    return re.findall(r"^\s+(\d+|-)\s+(ln1 output|time-mix output|channel-mix output|logits)\s.*\s(ok|FAIL)$",
                      out, re.M)


@pytest.mark.parametrize("mode", MODES)
def test_clean_model_within_default_tolerance(tool, capsys, work, mode):
    code, out = run_tool(tool, capsys, "--model", work["clean"], "--quantization", mode,
                         "--cache-dir", work["cache"])
    assert code == 0, out
    table = rows(out)
    assert len(table) == 3 * SHAPE["n_layer"] + 1 and all(r[2] == "ok" for r in table)
    assert table[-1][:2] == ("-", "logits")
    assert "all 3 layers and the logits within tolerance" in out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k", [0, 2])
def test_reports_corrupted_layer_against_clean_reference(tool, capsys, work, mode, k):
    code, out = run_tool(tool, capsys, "--model", work[f"corrupt{k}"], "--reference-checkpoint",
                         work["clean"], "--quantization", mode, "--cache-dir", work["cache"])
    assert code == 1, out
    table = rows(out)
    # every step before layer k's time-mix passes, that one fails, and the walk stops there
    assert table[-1] == (str(k), "time-mix output", "FAIL")
    assert len(table) == 3 * k + 2 and all(r[2] == "ok" for r in table[:-1])
    assert f"FIRST DIVERGENCE: layer {k}, time-mix output" in out


@pytest.mark.parametrize("mode", ["q0f16", "q4f16_1"])
@pytest.mark.parametrize("k", [0, 2])
def test_reports_fp16_overflow_layer(tool, capsys, work, mode, k):
    """Same weights on both sides: the compiled fp16 model overflows in layer k's channel mix."""
    code, out = run_tool(tool, capsys, "--model", work[f"overflow{k}"], "--quantization", mode,
                         "--cache-dir", work["cache"])
    assert code == 1, out
    table = rows(out)
    assert table[-1] == (str(k), "channel-mix output", "FAIL")
    assert len(table) == 3 * k + 3 and all(r[2] == "ok" for r in table[:-1])
    assert re.search(rf"FIRST DIVERGENCE: layer {k}, channel-mix output: \d+ NaN/Inf in ours \(reference: 0\)", out)
    assert f"--fp32-layers {k}" in out  # the hint names the fix


def test_overflow_is_fp16_only_and_fp32_layers_fix_it(tool, capsys, work):
    code, out = run_tool(tool, capsys, "--model", work["overflow2"], "--quantization", "q0f32",
                         "--cache-dir", work["cache"])
    assert code == 0, out
    code, out = run_tool(tool, capsys, "--model", work["overflow2"], "--quantization", "q0f16",
                         "--fp32-layers", "2", "--cache-dir", work["cache"])
    assert code == 0, out


def test_params_directory_carries_its_quantization(tool, capsys, work, tmp_path):
    from rwkv_relax.model_dir import convert
    params = convert(str(work["corrupt2"]), "q4f16_1", tmp_path / "params")
    code, out = run_tool(tool, capsys, "--model", params, "--reference-checkpoint", work["clean"],
                         "--cache-dir", work["cache"])
    assert code == 1, out
    assert "q4f16_1, float16 activations" in out and "FIRST DIVERGENCE: layer 2, time-mix output" in out
    code, out = run_tool(tool, capsys, "--model", params, "--quantization", "q0f16")
    assert code == 2 and "holds q4f16_1 weights, not q0f16" in out


def test_chatrwkv_logits_and_production_library(tool, capsys, work, factory):
    """--chatrwkv checks the numpy reference itself against the rwkv package; --lib checks that the
    debug build computes what the production library does."""
    lib = factory.library(work["clean"], quantization="q0f32")
    code, out = run_tool(tool, capsys, "--model", work["clean"], "--tokens", "5,17,300,2,2,41",
                         "--chatrwkv", "--lib", lib, "--cache-dir", work["cache"])
    assert code == 0, out
    ours, numpy_ref = map(float, re.search(r"rwkv package \(cpu fp32\) logits vs ours: max\|diff\| (\S+), "
                                           r"vs the numpy reference: (\S+) ", out).groups())
    assert ours < 1e-4 and numpy_ref < 1e-4
    assert float(re.search(r"vs debug build, logits: max\|diff\| (\S+)", out).group(1)) < 1e-5
    assert "6 tokens" in out


def test_debug_trace_matches_numpy_trace_shapes(work):
    """The library-level API: traces line up with NumpyRWKV's, one (T, C) array per sub-step."""
    from rwkv_relax import debug
    source = debug.resolve_weights(work["clean"])
    model = debug.DebugModel(debug.debug_library_for(source, "q0f32", work["cache"]), work["clean"])
    tokens = [3, 1, 4, 1, 5]
    (logits, trace), (ref_logits, ref_trace) = model.trace(tokens), debug.reference_trace(model, tokens)
    assert logits.shape == ref_logits.shape == (SHAPE["vocab_size"],)
    assert len(trace) == len(ref_trace) == SHAPE["n_layer"]
    for ours, ref in zip(trace, ref_trace):
        assert set(ours) == set(ref) == set(debug.SUBSTEPS)
        for step in debug.SUBSTEPS:
            assert ours[step].shape == ref[step].shape == (len(tokens), SHAPE["n_embd"])
            np.testing.assert_allclose(ours[step], ref[step], atol=1e-4 * np.abs(ref[step]).max())


def test_bad_input_is_one_line_error(work):
    proc = subprocess.run([sys.executable, str(TOOL), "--model", str(work["clean"]), "--tokens", "1,x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --tokens takes comma-separated integers, not '1,x'"]


NEW_SHAPES = {
    "rwkv6": dict(n_layer=3, n_embd=128, vocab_size=512, head_size=64, dim_ffn=448, dim_mix_lora=12,
                  dim_decay_lora=20, seed=22),
    "rwkv7": dict(n_layer=3, n_embd=128, vocab_size=512, head_size=64, dim_decay_lora=24, dim_a_lora=16,
                  dim_v_lora=32, dim_gate_lora=40, seed=22)}


@pytest.fixture(scope="module", params=list(NEW_SHAPES))
def work7(request, tmp_path_factory):
    """RWKV-6 / RWKV-7: clean, layer 1's time mix corrupted, layer 1's channel mix overflowing fp16."""
    from rwkv_relax.registry import get_spec
    spec, shape = get_spec(request.param), NEW_SHAPES[request.param]
    root = tmp_path_factory.mktemp(f"dump-{request.param}")
    paths = {"clean": write_checkpoint(spec.random_tensors(**shape), root / "clean.pth"), "cache": root / "cache",
             "n_layer": shape["n_layer"]}
    t = spec.random_tensors(**shape)
    t["blocks.1.att.output.weight"] *= 1.5
    paths["corrupt1"] = write_checkpoint(t, root / "corrupt1.pth")
    t = spec.random_tensors(**shape)
    t["blocks.1.ffn.key.weight"] *= OVERFLOW_GAIN
    t["blocks.1.ffn.value.weight"] /= OVERFLOW_GAIN ** 2
    paths["overflow1"] = write_checkpoint(t, root / "overflow1.pth")
    return paths


@pytest.mark.parametrize("mode", ["q0f32", "q0f16"])
def test_rwkv6_rwkv7_layer_by_layer(tool, capsys, work7, mode):
    code, out = run_tool(tool, capsys, "--model", work7["clean"], "--quantization", mode, "--cache-dir", work7["cache"])
    assert code == 0 and all(r[2] == "ok" for r in rows(out)) and len(rows(out)) == 3 * work7["n_layer"] + 1, out
    code, out = run_tool(tool, capsys, "--model", work7["corrupt1"], "--reference-checkpoint", work7["clean"],
                         "--quantization", mode, "--cache-dir", work7["cache"])
    assert code == 1 and rows(out)[-1] == ("1", "time-mix output", "FAIL"), out
    if mode == "q0f16":
        code, out = run_tool(tool, capsys, "--model", work7["overflow1"], "--quantization", mode,
                             "--cache-dir", work7["cache"])
        assert code == 1 and rows(out)[-1] == ("1", "channel-mix output", "FAIL") and "--fp32-layers 1" in out, out


def test_rwkv6_rwkv7_chatrwkv_logits(tool, capsys, work7):
    """The RWKV-6 / RWKV-7 numpy reference against the rwkv package (RWKV / RWKV_x070, in its own
    process)."""
    code, out = run_tool(tool, capsys, "--model", work7["clean"], "--tokens", "5,17,300,2,2,41", "--chatrwkv",
                         "--cache-dir", work7["cache"])
    assert code == 0, out
    ours, numpy_ref = map(float, re.search(r"rwkv package \(cpu fp32\) logits vs ours: max\|diff\| (\S+), "
                                           r"vs the numpy reference: (\S+) ", out).groups())
    assert ours < 1e-4 and numpy_ref < 1e-4
