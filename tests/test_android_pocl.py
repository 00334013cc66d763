"""The OpenCL kernels of an fp32 android build, run for real on an OpenCL device (PoCL on CI).

Every kernel the library ships (embed, prefill, decode, batch prefill/decode, the RNN-state
copies) runs through pyopencl on random inputs, launched as the host code would, and is compared
buffer by buffer with its unscheduled twin compiled for llvm; the WKV kernels are also compared
with their numpy twins. PoCL has no cl_khr_fp16, so only q0f32 runs. Without pyopencl or an
OpenCL platform the tests skip; ``.ci/setup_opencl.sh`` installs both.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rwkv_relax.pipeline import ModelSource, export, system_lib_prefix
from rwkv_relax.registry import get_spec
from rwkv_relax.targets import get_target
from rwkv_relax.testing.opencl_runner import AndroidBuild, OpenCLUnavailable, open_device
from tir_kernels.wkv4 import STATE_ROWS, wkv4_numpy, wkv4_ragged_numpy
from tir_kernels.wkv5 import wkv5_numpy, wkv5_ragged_numpy
from tir_kernels.wkv6 import wkv6_numpy, wkv6_ragged_numpy
from tir_kernels.wkv7 import wkv7_numpy, wkv7_ragged_numpy

ARCHS = {
    "rwkv5": dict(n_layer=1, n_embd=128, vocab_size=1000, dim_ffn=448),  # H = 2, N = 64 (real head size)
    "rwkv4": dict(n_layer=1, n_embd=96, vocab_size=1000, dim_ffn=384),  # C = 96: a tail in WKV4's 64-wide blocks
    "rwkv6": dict(n_layer=1, n_embd=128, vocab_size=1000, dim_ffn=448, dim_mix_lora=16, dim_decay_lora=24),
    # two layers: layer 0 has no value-residual LoRA, layer 1 does
    "rwkv7": dict(n_layer=2, n_embd=128, vocab_size=1000, dim_ffn=384, dim_decay_lora=24, dim_a_lora=40,
                  dim_v_lora=16, dim_gate_lora=48),
}
# values for the symbolic sizes: seq_len / total_len tokens, batch_size / batch / B sequences
# (in batch decode, batch_size is both); vocab 1000 leaves a tail in the head matmul's tiles
SIZES = {
    "prefill": dict(seq_len=17, total_len=17, batch_size=3, batch=3, B=3, max_seqs=4, max_history=3),
    "one_token": dict(seq_len=1, total_len=1, batch_size=1, batch=1, B=1, max_seqs=2, max_history=2),
}
RTOL = 1e-5  # of the reference's largest magnitude; fp32 sums of up to 448 terms in another order
COMMON = [r"embedding", r"(fused_)?NT_matmul\w*", r"layer_norm\d*", r"token_shift\d*",
          r"token_shift_ragged\d*", r"last_tokens?\d*", r"rnn_state_get_\d+", r"rnn_state_set_\d+"]
FAMILIES = {"rwkv5": COMMON + ["wkv5", "wkv5_ragged", r"group_norm\d*"],
            "rwkv4": COMMON + ["wkv4", "wkv4_ragged"],
            "rwkv6": COMMON + ["wkv6", "wkv6_ragged", r"group_norm\d*"],
            "rwkv7": COMMON + ["wkv7", "wkv7_ragged", r"group_norm\d*"]}


@pytest.fixture(scope="module")
def device():
    try:
        return open_device()
    except OpenCLUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def builds(device):  # noqa: ARG001 (depends on device so that nothing is compiled when skipping)
    cache = {}

    def get(arch_name: str) -> AndroidBuild:
        if arch_name not in cache:
            arch = get_spec(arch_name)
            config = arch.config_cls.from_dict(dict(ARCHS[arch_name], name=f"pocl-{arch_name}"))
            source = ModelSource(arch, config)
            mod, _ = export(source, "q0f32")
            cache[arch_name] = AndroidBuild(mod, get_target("android").target(),
                                            system_lib_prefix(source, "q0f32"))
        return cache[arch_name]
    return get


def realistic(func: str, param: str, shape, dtype, sizes, rng):
    """Inputs in the ranges the model feeds, where standard normals would be wrong or
    ill-conditioned; None keeps the runner's default."""
    if func.startswith("wkv5"):
        if param == "w":
            return rng.uniform(0.3, 0.999, shape)  # exp(-exp(time_decay)), in (0, 1)
        if param == "u":
            return rng.normal(0.0, 0.5, shape)  # time_faaaa
    if func.startswith("wkv6"):
        if param == "w":
            return np.exp(-np.exp(rng.uniform(-6.0, 1.5, shape)))  # per-token exp(-exp(d)), in (0, 1)
        if param == "u":
            return rng.normal(0.0, 0.5, shape)  # time_faaaa
    if func.startswith("wkv4"):
        if param == "w":
            return -np.exp(rng.standard_normal(shape))  # -exp(time_decay) < 0
        if param == "s_in":  # rows aa, bb, pp (tir_kernels/wkv4.py)
            row = shape[1:]
            return np.stack([rng.standard_normal(row),
                             rng.uniform(0.5, 4.0, row),  # bb: a sum of exps, > 0, or the division blows up
                             rng.standard_normal(row) * 3])  # pp: a running exponent of either sign
    if func.startswith("wkv7"):
        if param == "w":
            return rng.uniform(0.55, 0.999, shape)  # exp(-e^-0.5 sigmoid(.)), in (0.545, 1)
        if param in ("a", "b"):  # a = -kappa, b = kappa * rate: unit key directions per head
            kappa = rng.standard_normal(shape)
            kappa /= np.linalg.norm(kappa, axis=-1, keepdims=True)
            return -kappa if param == "a" else kappa * rng.uniform(0, 1, shape)
    if param == "arange":  # seg_one_token_each's output: start it unlike what the kernel writes
        return np.full(shape, -1)
    return None


def rel_err(got, want) -> float:
    want = np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("sizes", list(SIZES))
@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_kernel_matches_llvm(builds, device, rng, arch, sizes):
    build = builds(arch)
    for family in FAMILIES[arch]:
        assert build.find(family), f"no {family} kernel in the {arch} build"
    checks = {name: build.check(name, SIZES[sizes], rng, device, realistic) for name in build.functions}
    # every kernel of the shipped OpenCL source ran
    assert {k for c in checks.values() for k, _, _ in c.launched} == set(build.sources)
    bad = {name: c.errors() for name, c in checks.items() if not c.max_error() <= RTOL}
    assert not bad, bad
    assert not [name for name, c in checks.items() if not c.written()]  # each compared an output


@pytest.mark.parametrize("T", [1, 17])
def test_wkv5_matches_numpy(builds, device, rng, T):
    build = builds("rwkv5")
    [name] = build.find("wkv5")
    c = build.check(name, {"seq_len": T}, rng, device, realistic)
    out, s = wkv5_numpy(*(c.input(p) for p in ("r", "k", "v", "w", "u", "s_in")))
    assert rel_err(c["out"], out) < RTOL
    assert rel_err(c["s_out"], s) < RTOL


@pytest.mark.parametrize("tokens,seqs", [(17, 3), (3, 3)])  # prefill of 3 sequences; batch decode
def test_wkv5_ragged_matches_numpy(builds, device, rng, tokens, seqs):
    build = builds("rwkv5")
    [name] = build.find("wkv5_ragged")
    c = build.check(name, {"total_len": tokens, "batch": seqs}, rng, device, realistic)
    out, s = wkv5_ragged_numpy(*(c.input(p) for p in ("r", "k", "v", "w", "u", "s_in", "seg_last")))
    assert rel_err(c["out"], out) < RTOL
    assert rel_err(c["s_out"], s) < RTOL


@pytest.mark.parametrize("T", [1, 17])
def test_wkv6_matches_numpy(builds, device, rng, T):
    build = builds("rwkv6")
    [name] = build.find("wkv6")
    c = build.check(name, {"seq_len": T}, rng, device, realistic)
    out, s = wkv6_numpy(*(c.input(p) for p in ("r", "k", "v", "w", "u", "s_in")))
    assert rel_err(c["out"], out) < RTOL
    assert rel_err(c["s_out"], s) < RTOL


@pytest.mark.parametrize("tokens,seqs", [(17, 3), (3, 3)])
def test_wkv6_ragged_matches_numpy(builds, device, rng, tokens, seqs):
    build = builds("rwkv6")
    [name] = build.find("wkv6_ragged")
    c = build.check(name, {"total_len": tokens, "batch": seqs}, rng, device, realistic)
    out, s = wkv6_ragged_numpy(*(c.input(p) for p in ("r", "k", "v", "w", "u", "s_in", "seg_last")))
    assert rel_err(c["out"], out) < RTOL
    assert rel_err(c["s_out"], s) < RTOL


@pytest.mark.parametrize("T", [1, 17])
def test_wkv7_matches_numpy(builds, device, rng, T):
    build = builds("rwkv7")
    [name] = build.find("wkv7")
    c = build.check(name, {"seq_len": T}, rng, device, realistic)
    out, s = wkv7_numpy(*(c.input(p) for p in ("r", "w", "k", "v", "a", "b", "s_in")))
    assert rel_err(c["out"], out) < RTOL
    assert rel_err(c["s_out"], s) < RTOL


@pytest.mark.parametrize("tokens,seqs", [(17, 3), (3, 3)])
def test_wkv7_ragged_matches_numpy(builds, device, rng, tokens, seqs):
    build = builds("rwkv7")
    [name] = build.find("wkv7_ragged")
    c = build.check(name, {"total_len": tokens, "batch": seqs}, rng, device, realistic)
    out, s = wkv7_ragged_numpy(*(c.input(p) for p in ("r", "w", "k", "v", "a", "b", "s_in", "seg_last")))
    assert rel_err(c["out"], out) < RTOL
    assert rel_err(c["s_out"], s) < RTOL


@pytest.mark.parametrize("T", [1, 17])
def test_wkv4_matches_numpy(builds, device, rng, T):
    build = builds("rwkv4")
    [name] = build.find("wkv4")
    c = build.check(name, {"seq_len": T}, rng, device, realistic)
    out, s = wkv4_numpy(*(c.input(p) for p in ("k", "v", "w", "u", "s_in")))
    assert rel_err(c["out"], out) < RTOL
    for row, name in enumerate(STATE_ROWS):  # each state row on its own scale
        assert rel_err(c["s_out"][row], s[row]) < RTOL, name


@pytest.mark.parametrize("tokens,seqs", [(17, 3), (3, 3)])
def test_wkv4_ragged_matches_numpy(builds, device, rng, tokens, seqs):
    build = builds("rwkv4")
    [name] = build.find("wkv4_ragged")
    c = build.check(name, {"total_len": tokens, "B": seqs}, rng, device, realistic)
    out, s = wkv4_ragged_numpy(*(c.input(p) for p in ("k", "v", "w", "u", "s_in", "seg_last")))
    assert rel_err(c["out"], out) < RTOL
    for row, name in enumerate(STATE_ROWS):  # each state row on its own scale
        assert rel_err(c["s_out"][row], s[row]) < RTOL, name


@pytest.mark.parametrize("fault", ["half_grid", "swapped_buffers"])
def test_a_wrong_launch_is_caught(builds, device, rng, monkeypatch, fault):
    """The comparison is not vacuous: launching the WKV5 kernel on half its blocks, or with its
    r and k buffers swapped, fails it."""
    build = builds("rwkv5")
    [name] = build.find("wkv5")
    func = build.functions[name]
    launch = func.launches[0]
    if fault == "half_grid":
        bad = dataclasses.replace(launch, grid=[launch.grid[0] // 2, *launch.grid[1:]])
    else:
        params = [p.name for p in func.host.params]
        swap = {("buffer", params.index("r")): ("buffer", params.index("k")),
                ("buffer", params.index("k")): ("buffer", params.index("r"))}
        bad = dataclasses.replace(launch, args=[swap.get(a, a) if a[0] == "buffer" else a for a in launch.args])
    monkeypatch.setitem(build.functions, name, dataclasses.replace(func, launches=[bad]))
    c = build.check(name, {"seq_len": 5}, rng, device, realistic)
    assert c.errors()["out"] > 0.01
