"""llama.cpp as a CPU peer for RWKV-7, measured beside our build (tools/bench.py --llama-cpp).

Nothing of llama.cpp is in this repo or in CI: you point the tools at an interpreter where
``llama_cpp`` (llama-cpp-python, built on your machine from its PyPI sdist) imports, and at the
``convert_hf_to_gguf.py`` its sdist vendors (``vendor/llama.cpp/``). This module

* writes a BlinkDL RWKV-7 checkpoint as the "RWKV HF" remote-code folder llama.cpp's converter
  reads (``versions/rwkv7/names.py``'s ``hf`` layout, a config.json with every width from our
  own shape inference, the World vocab file) and converts it to GGUF per type (f32, f16, q8_0);
* runs, with that interpreter, a timing server (this same file run as a script: it imports
  only llama_cpp and numpy) that answers one request per round, so that rounds interleave with
  ours: prefill of a random prompt from a fresh state, then single-token decode steps.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def write_hf_folder(pth: Path, folder: Path) -> Path:
    """The checkpoint as llama.cpp's converter wants it (architectures: Rwkv7ForCausalLM)."""
    import shutil

    import torch

    from rwkv_relax.runtime.tokenizers import WORLD_VOCAB_NAME, default_world_vocab
    from rwkv_relax.testing.random_weights import write_checkpoint
    from rwkv_relax.versions.rwkv7.names import HF_REMOTE
    from rwkv_relax.weights import open_weights
    weights = open_weights(pth)
    if weights.spec.name != "rwkv7":
        raise SystemExit(f"{pth} is {weights.spec.title}; the llama.cpp peer is set up for RWKV-7")
    cfg = weights.config
    if cfg.vocab_size != 65536:
        raise SystemExit("llama.cpp's RWKV World vocabulary needs vocab_size 65536")
    tensors = {k: v.float().numpy() for k, v in torch.load(pth, map_location="cpu").items()}
    folder.mkdir(parents=True, exist_ok=True)
    write_checkpoint(tensors, folder / "model.safetensors", HF_REMOTE)
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["Rwkv7ForCausalLM"], "model_type": "rwkv7", "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer, "head_size": cfg.head_size,
        "intermediate_size": cfg.dim_ffn, "layer_norm_epsilon": cfg.layer_norm_eps,
        "lora_rank_decay": cfg.dim_decay_lora, "lora_rank_iclr": cfg.dim_a_lora,
        "lora_rank_value_residual_mix": cfg.dim_v_lora, "lora_rank_gate": cfg.dim_gate_lora}))
    shutil.copyfile(default_world_vocab(), folder / WORLD_VOCAB_NAME)
    return folder


def convert(pth: Path, work: Path, python: str, converter: str, types: list[str]) -> dict[str, Path]:
    hf = write_hf_folder(pth, work / "hf")
    out = {}
    for outtype in types:
        gguf = work / f"model-{outtype}.gguf"
        done = subprocess.run([python, converter, str(hf), "--outtype", outtype, "--outfile", str(gguf)],
                              capture_output=True, text=True)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise SystemExit(f"llama.cpp's converter failed under {python}: {last}; install its requirements "
                             f"there (pip install -r vendor/llama.cpp/requirements/"
                             f"requirements-convert_hf_to_gguf.txt, torch included)")
        out[outtype] = gguf
    return out


class Peer:
    """A timing server in ``python``; ``round(gguf, prompt, decode_steps)`` -> (prefill, decode)
    tok/s of one round (the model stays loaded between rounds)."""

    def __init__(self, python: str, threads: int):
        from timing_server import TimingServer
        self.server = TimingServer("llama.cpp", [python, __file__, str(threads)])

    def round(self, gguf: Path, prompt: list[int], decode: list[int]) -> tuple[float, float]:
        reply = self.server.request({"gguf": str(gguf), "prompt": prompt, "decode": decode})
        return reply["prefill_tok_s"], reply["decode_tok_s"]

    def close(self):
        self.server.close()


def _serve(threads: int) -> None:
    from llama_cpp import Llama
    models = {}
    for line in sys.stdin:
        req = json.loads(line)
        if req["gguf"] not in models:
            models[req["gguf"]] = Llama(model_path=req["gguf"], n_threads=threads, n_threads_batch=threads,
                                        n_ctx=4096, n_batch=512, logits_all=False, verbose=False)
        llm = models[req["gguf"]]
        llm.reset()  # a fresh recurrent state
        t0 = time.perf_counter()
        llm.eval(req["prompt"])
        t1 = time.perf_counter()
        for token in req["decode"]:
            llm.eval([token])
        t2 = time.perf_counter()
        print(json.dumps({"prefill_tok_s": len(req["prompt"]) / (t1 - t0),
                          "decode_tok_s": len(req["decode"]) / (t2 - t1)}), flush=True)


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
