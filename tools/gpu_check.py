"""Run a CUDA build on an NVIDIA GPU and compare it with the llvm build of the same checkpoint.

    python tools/gpu_check.py [--checkpoint model.pth] [--arch sm_90] [--quantization q0f32]

Builds both libraries (a random RWKV-5 12 x 768, vocab 65536 by default), runs a prefill and
decode steps on each, prints the max-abs logit difference per step and decode/prefill tok/s on the
GPU and the CPU. Needs a machine with a GPU and a driver; says so and exits 1 otherwise.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--chip", "--arch", dest="chip", default="sm_90", help="CUDA sm_XX")
    p.add_argument("--model-type", default="rwkv5", help="the RWKV version of the random checkpoint")
    p.add_argument("--quantization", default="q0f32")
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--decode-steps", type=int, default=32)
    args = p.parse_args(argv)
    import tvm

    from rwkv_relax import load_model
    from rwkv_relax.pipeline import build
    from rwkv_relax.registry import get_spec
    from rwkv_relax.testing.random_weights import write_checkpoint
    if not tvm.cuda(0).exist:
        print("no CUDA device visible: run this on a machine with an NVIDIA GPU and driver")
        return 1
    work = Path(tempfile.mkdtemp(prefix="rwkv_gpu_"))
    ckpt = args.checkpoint or write_checkpoint(
        get_spec(args.model_type).random_tensors(n_layer=12, n_embd=768, vocab_size=65536), work / "model.pth")
    libs = {dev: build(str(ckpt), target=target, chip=args.chip if dev == "cuda" else None,
                       quantization=args.quantization, output=work / f"lib-{dev}.so")
            for dev, target in (("cuda", "cuda"), ("cpu", "llvm"))}
    models = {dev: load_model(lib, ckpt, device=dev) for dev, lib in libs.items()}
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 65536 if not args.checkpoint else models["cpu"].vocab_size, args.prompt)
    outs = {dev: m.prefill(prompt) for dev, m in models.items()}
    ref_scale = np.abs(outs["cpu"][0]).max()
    print(f"prefill {args.prompt}: max|cuda - llvm| = {np.abs(outs['cuda'][0] - outs['cpu'][0]).max():.3g} "
          f"(max|logit| {ref_scale:.3g})")
    states = {dev: o[1] for dev, o in outs.items()}
    token = int(outs["cpu"][0].argmax())
    for step in range(8):
        step_out = {dev: m.decode(token, states[dev]) for dev, m in models.items()}
        states = {dev: o[1] for dev, o in step_out.items()}
        diff = np.abs(step_out["cuda"][0] - step_out["cpu"][0]).max()
        print(f"decode {step}: max|cuda - llvm| = {diff:.3g}")
        token = int(step_out["cpu"][0].argmax())
    for dev, m in models.items():
        s = m.new_state()
        m.advance(s, prompt[:8].tolist())
        t0 = time.perf_counter()
        for _ in range(args.decode_steps):
            m.advance(s, [token])
        dec = args.decode_steps / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        m.advance(m.new_state(), prompt.tolist())
        pre = args.prompt / (time.perf_counter() - t0)
        print(f"{dev:5s} decode {dec:8.1f} tok/s   prefill {pre:9.1f} tok/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
