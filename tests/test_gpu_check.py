"""``tools/gpu_check.py --suite`` on its CPU path (llvm libraries, tiny shapes), so that the GPU
suite cannot rot between lent GPUs: the same builds, parity, random device weights, bandwidth
probe, timings, table and JSON as ``--device cuda``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tvm

from rwkv_relax.targets import get_target
from rwkv_relax.testing.device_params import random_params, value_range

ROOT = Path(__file__).resolve().parent.parent
# one version, one build: (a) and both (b) rows run on the same tiny rwkv7 library
ARCHS, MODES, PRESETS = ["rwkv7"], ["q4f16_1"], ["rwkv7-world-1.5b", "rwkv7-world-0.1b"]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    work = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--suite", "--device", "cpu",
                           "--archs", ",".join(ARCHS), "--modes", ",".join(MODES), "--presets", ",".join(PRESETS),
                           "--json", str(work / "report.json"), "--workdir", str(work)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return json.loads((work / "report.json").read_text()), proc.stdout, work


def test_parity_against_the_numpy_model(suite):
    report, _, _ = suite
    assert report["device"] == "cpu" and report["target"] == "llvm"
    cases = {(c["model_type"], c["mode"]): c for c in report["parity"]}
    assert set(cases) == {(a, m) for a in ARCHS for m in MODES}
    for case in cases.values():
        assert case["reference"] == "numpy" and case["ok"]
        for key in ("prefill", "decode", "batch_decode"):
            # fp16 activations against float64: close, never identical
            assert 0 < case[key] <= report["tolerance"] <= 0.05, (case, key)


def test_speed_and_batch_numbers(suite):
    report, stdout, _ = suite
    assert report["ok"] and report["copy_bandwidth"] > 1e8  # bytes/s: any machine copies 100 MB/s
    speed = {(c["preset"], c["mode"]): c for c in report["speed"]}
    assert set(speed) == {(p, m) for p in PRESETS for m in MODES}
    for (preset, _), case in speed.items():
        assert case["model_type"] == preset.split("-")[0] and case["finite"]
        assert case["decode_tok_s"] > 0 and case["prefill_tok_s"] > 0 and case["prefill_tokens"] == 64
        assert case["weight_bytes_per_step"] > 0
        assert case["ceiling_tok_s"] == pytest.approx(report["copy_bandwidth"] / case["weight_bytes_per_step"])
        assert case["ceiling_share"] == pytest.approx(case["decode_tok_s"] / case["ceiling_tok_s"])
        assert [b["sequences"] for b in case["batch"]] == [1, 8, 64]
        assert all(b["tok_s"] > 0 and b["step_ms"] > 0 for b in case["batch"])
        assert "graph_decode_tok_s" not in case  # CUDA graphs: cuda only
    # one markdown table: a header, a rule, a row per case
    rows = [line for line in stdout.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + len(report["parity"]) + len(report["speed"])
    assert all(row.count("|") == rows[0].count("|") for row in rows)


def test_random_device_params_follow_the_layout(rng):
    params = [{"name": "blocks.0.ffn.key.q_weight", "shape": [96, 16], "dtype": "uint32"},
              {"name": "blocks.0.ffn.key.q_scale", "shape": [96, 4], "dtype": "float16"},
              {"name": "head.weight", "shape": [300, 128], "dtype": "float32"},
              {"name": "blocks.0.att.time_mix_k", "shape": [1, 128], "dtype": "float16"}]
    target = get_target("llvm").target()
    seed = int(rng.integers(1 << 20))
    made = random_params(params, "q4f16_1", tvm.cpu(), target, seed=seed)
    again = random_params(params, "q4f16_1", tvm.cpu(), target, seed=seed)
    other = random_params(params, "q4f16_1", tvm.cpu(), target, seed=seed + 1)
    for p, t, t2, t3 in zip(params, made, again, other):
        a = t.numpy()
        assert a.shape == tuple(p["shape"]) and a.dtype == np.dtype(p["dtype"])
        np.testing.assert_array_equal(a, t2.numpy())  # the seed alone decides
        assert (a != t3.numpy()).mean() > 0.9
        if p["dtype"] == "uint32":
            assert (a >> 28).min() == 0 and (a >> 28).max() == 15  # every 4-bit code occurs
        else:
            lo, hi = value_range(p["name"], p["shape"], p["dtype"], "q4f16_1")
            assert lo <= a.min() and a.max() <= hi and len(np.unique(a)) > a.size // 4
            assert abs(a.astype(np.float64).mean() - (lo + hi) / 2) < 0.05 * (hi - lo)
    assert value_range("head.weight", [128, 300], "float32", "q4f16_1") == pytest.approx((-300 ** -0.5, 300 ** -0.5))
    # a quantized matrix's scales give its weights the same bound: 4-bit codes reach -8 times the scale
    lo, hi = value_range("ffn.value.q_scale_t", [300, 4], "float16", "q4f16_1")
    assert 8 * hi == pytest.approx(300 ** -0.5) and lo == pytest.approx(hi / 2)


def test_a_failing_case_is_a_row_not_a_crash(suite):
    """On a lent GPU one failing build or kernel must not lose the run's other numbers."""
    sys.path.insert(0, str(ROOT / "tools"))
    import gpu_check
    report, _, _ = suite

    def broken():
        raise RuntimeError("building x.so failed: nvcc exploded\nmore lines")
    failed = gpu_check.one_case(broken, model_type="rwkv9", mode="q0f16", reference="llvm", shape="2x128")
    assert failed["ok"] is False and failed["error"] == "building x.so failed: nvcc exploded"
    speed_failed = gpu_check.one_case(broken, preset="rwkv7-world-7.2b", mode="q0f16")
    rows = gpu_check.table({**report, "parity": report["parity"] + [failed],
                            "speed": report["speed"] + [speed_failed]}).splitlines()
    assert len({row.count("|") for row in rows}) == 1
    assert sum("ERROR: building x.so failed: nvcc exploded" in row for row in rows) == 2


def test_the_graph_branch_on_a_second_copy(suite, rng):
    """--cuda-graph's comparison and timing (cuda only) run here with the plain library standing in
    for the graph one: the same weights and tokens give the same logits."""
    sys.path.insert(0, str(ROOT / "tools"))
    import gpu_check
    from gpu_check_cases import speed_case
    _, _, work = suite
    lib = work / f"{ARCHS[0]}-{MODES[0]}-llvm.so"
    plan = gpu_check.Plan.of("cpu", 16)
    case = speed_case(lib, MODES[0], plan, get_target("llvm").target(), rng, graph_lib=lib)
    assert case["graph_max_rel_diff"] == 0.0 and case["graph_decode_tok_s"] > 0 and case["finite"]
