"""``--cuda-graph``: decode's kernels are captured in CUDA graphs (TVM's RewriteCUDAGraph), and
nothing else is. Checked on the lowered Relax here (no GPU); running it needs one
(``tools/gpu_check.py --suite --cuda-graph``)."""
from __future__ import annotations

import shutil

import pytest
from tvm import relax

from rwkv_relax import build as build_cli
from rwkv_relax.pipeline import export, resolve_model
from rwkv_relax.targets import get_target
from rwkv_relax.targets.cuda import CUDA_GRAPH_FUNCTIONS, cuda_graph_context
from rwkv_relax.testing import artifacts

SHAPES = {"rwkv5": dict(n_layer=2, n_embd=64, vocab_size=256, dim_ffn=224),
          "rwkv7": dict(n_layer=2, n_embd=64, vocab_size=256, dim_ffn=256, dim_decay_lora=16, dim_a_lora=16,
                        dim_v_lora=16, dim_gate_lora=16)}
RUN = "vm.builtin.cuda_graph.run_or_capture"


def lowered(factory, arch: str, graph: bool) -> dict[str, str]:
    """Entry function name -> its lowered Relax (cuda pipeline, before codegen)."""
    source = resolve_model(str(factory.checkpoint(arch, "cuda_graph", **SHAPES[arch])))
    mod, _ = export(source, "q4f16_1")
    preset = get_target("cuda")
    if graph:
        with cuda_graph_context():
            out = preset.pipeline(preset.target("sm_90"))(mod)
    else:
        out = preset.pipeline(preset.target("sm_90"))(mod)
    return {gv.name_hint: f.script() for gv, f in out.functions_items() if isinstance(f, relax.Function)}


@pytest.mark.parametrize("arch", list(SHAPES))
def test_decode_alone_is_captured(factory, arch):
    on, off = lowered(factory, arch, True), lowered(factory, arch, False)
    assert not any("vm.builtin.cuda_graph" in text for text in off.values())
    assert not any("_cuda_graph_capture" in name for name in off)
    decode = on["decode"]
    # every layer has captured regions; the RNNState's get/set (packed calls) stay outside them
    assert decode.count(RUN) >= SHAPES[arch]["n_layer"]
    assert decode.count("vm.builtin.rnn_state_get") == off["decode"].count("vm.builtin.rnn_state_get") > 0
    captures = {name: text for name, text in on.items() if "_cuda_graph_capture" in name}
    assert captures and all(name.split("_cuda_graph_capture")[0] in CUDA_GRAPH_FUNCTIONS for name in captures)
    assert not any("rnn_state" in text for text in captures.values())
    # create_rnn_state hands its zero state to the RNNState, which keeps it: it must not live in
    # the cached allocation decode's captured kernels write to
    for name in ("create_rnn_state", "prefill", "batch_prefill", "batch_decode", "embed"):
        assert "vm.builtin.cuda_graph" not in on[name], name
        assert on[name] == off[name], name


def test_cuda_graph_is_refused_off_cuda(capsys, tmp_path):
    out = tmp_path / "x.so"
    assert build_cli.main(["--model", "rwkv5-world-0.1b", "--target", "llvm", "--cuda-graph", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cuda-graph" in err[0] and "--target cuda" in err[0]
    assert not out.exists()


def test_cuda_graph_build_completes(factory, tmp_path):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed")
    out = tmp_path / "lib.so"
    ckpt = factory.checkpoint("rwkv5", "cuda_graph", **SHAPES["rwkv5"])
    assert build_cli.main(["--model", str(ckpt), "--target", "cuda", "--chip", "sm_90", "--quantization",
                           "q4f16_1", "--cuda-graph", "-o", str(out)]) == 0
    blob = out.read_bytes()
    assert artifacts.extract_fatbins(blob)
    assert b'\\"cuda_graph\\": true' in blob or b'"cuda_graph": true' in blob  # _metadata records it
    assert b"decode_cuda_graph_capture" in blob and b"cuda_graph_alloc" in blob
