"""Decode / prefill speed of our llvm build against the `rwkv` package, measured in one run.

    python tools/bench.py                       # RWKV-5, 12 x 768, vocab 65536, fp32
    python tools/bench.py --arch rwkv4 --layers 12 --embd 768

Prints tok/s for both, their ratio, and the bandwidth ceiling: measured copy bandwidth divided by
the weight bytes one decode step must read. Benchmarks, not tests: numbers vary run to run.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def copy_bandwidth(nbytes: int = 512 * 2**20, repeats: int = 5) -> float:
    """STREAM-style copy bandwidth in bytes/s (read + write counted), best of numpy and torch."""
    import torch
    best = 0.0
    a = np.ones(nbytes // 4, np.float32)
    b = np.empty_like(a)
    b[:] = 0  # touch pages before timing
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    for copy in (lambda: np.copyto(b, a), lambda: tb.copy_(ta)):
        for _ in range(repeats):
            t0 = time.perf_counter()
            copy()
            best = max(best, 2 * nbytes / (time.perf_counter() - t0))
    return best


def timed(fn, repeats: int) -> float:
    """Best-of-3 mean seconds per call over ``repeats`` calls."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - t0) / repeats)
    return best


def decode_weight_bytes(params: dict) -> int:
    """Bytes one decode step reads: every weight except the embedding table (one row of it)."""
    total = 0
    for name, (shape, dtype) in params.items():
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        total += n // shape[0] if name.startswith("embeddings.") else n
    return total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="rwkv5", choices=["rwkv5", "rwkv4"])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--embd", type=int, default=768)
    p.add_argument("--vocab", type=int, default=65536)
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--decode-steps", type=int, default=16)
    p.add_argument("--checkpoint", default=None, help="use this .pth instead of a random one")
    p.add_argument("--skip-reference", action="store_true")
    args = p.parse_args(argv)

    os.environ.setdefault("RWKV_JIT_ON", "1")
    os.environ.setdefault("RWKV_CUDA_ON", "0")
    from rwkv_relax import load_model
    from rwkv_relax.pipeline import build, export, resolve_model
    from rwkv_relax.testing import checkpoints
    from rwkv_relax.testing.reference import reference_model

    work = Path(tempfile.mkdtemp(prefix="rwkv_bench_"))
    ckpt = Path(args.checkpoint) if args.checkpoint else checkpoints.write_checkpoint(
        getattr(checkpoints, f"{args.arch}_tensors")(n_layer=args.layers, n_embd=args.embd,
                                                     vocab_size=args.vocab), work / "model.pth")
    t0 = time.perf_counter()
    lib = build(str(ckpt), target="llvm", output=work / "model.so")
    build_s = time.perf_counter() - t0
    _, params, _ = export(resolve_model(str(ckpt)))
    weight_bytes = decode_weight_bytes(params)
    bandwidth = copy_bandwidth()
    ceiling = bandwidth / weight_bytes

    rng = np.random.default_rng(0)
    prompt = rng.integers(0, args.vocab, args.prefill).tolist()
    model = load_model(lib, ckpt)
    state = model.new_state()
    model.advance(state, prompt[:8])
    ours_decode = 1 / timed(lambda: model.advance(state, [int(rng.integers(args.vocab))]), args.decode_steps)
    ours_prefill = args.prefill / timed(lambda: model.advance(model.new_state(), prompt), 1)

    rows = [("ours (llvm fp32)", ours_decode, ours_prefill)]
    if not args.skip_reference:
        ref = reference_model(ckpt)
        _, rstate = ref.forward(prompt[:8], None)

        def ref_step():
            nonlocal rstate
            _, rstate = ref.forward([int(rng.integers(args.vocab))], rstate)
        rows.append(("rwkv package (cpu fp32)", 1 / timed(ref_step, args.decode_steps),
                     args.prefill / timed(lambda: ref.forward(prompt, None), 1)))

    print(f"model: {args.arch} {args.layers} x {args.embd}, vocab {args.vocab}; build {build_s:.1f} s")
    print(f"weights read per decode step: {weight_bytes / 2**20:.1f} MiB; copy bandwidth "
          f"{bandwidth / 1e9:.1f} GB/s -> ceiling {ceiling:.1f} tok/s")
    print(f"{'':28s} {'decode tok/s':>13s} {'prefill tok/s':>14s} {'% of ceiling':>13s}")
    for name, dec, pre in rows:
        print(f"{name:28s} {dec:13.2f} {pre:14.1f} {100 * dec / ceiling:12.0f}%")
    if len(rows) == 2:
        print(f"{'ratio ours / rwkv package':28s} {rows[0][1] / rows[1][1]:13.2f} {rows[0][2] / rows[1][2]:14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
