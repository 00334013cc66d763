"""Quality cost of each quantization mode against fp32, on one checkpoint.

    python tools/quant_quality.py [--checkpoint model.pth | --arch rwkv4] [--positions 256]

Prints mean/max KL divergence and top-1 agreement over teacher-forced positions.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np


def build_variants(mode: str, ab_dense: bool, int8_activations: bool) -> list[tuple[str, dict]]:
    """(label, extra ``build`` arguments) of each library to make for ``mode``: with ``ab_dense``
    "mode" is the sparse hidden-major channel-mix value and "mode/dense" the dense one; with
    ``int8_activations`` "mode/i8" (``--cpu-int8-activations``) joins each quantized mode.
    Shared with tools/bench.py."""
    from rwkv_relax.quantization import get_mode
    if ab_dense:
        out = [(mode, {"overrides": {"ffn_value_layout": "hidden_major"}}),
               (f"{mode}/dense", {"overrides": {"ffn_value_layout": "dense"}})]
    else:
        out = [(mode, {})]
    if int8_activations and get_mode(mode).quantized:
        out.append((f"{mode}/i8", {"cpu_int8_activations": True}))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="default: a random checkpoint (2 x 256, vocab 4096)")
    from rwkv_relax.registry import VERSIONS
    p.add_argument("--model-type", "--arch", dest="model_type", default="rwkv5", choices=list(VERSIONS),
                   help="the RWKV version of the random checkpoint")
    p.add_argument("--positions", type=int, default=256)
    p.add_argument("--modes", default="q0f16,q8f16_1,q4f32_1,q4f16_1")
    p.add_argument("--ab-dense", action="store_true",
                   help="each mode with the sparse hidden-major channel-mix value (quantized along C) and the "
                        "dense default (quantized along F)")
    p.add_argument("--cpu-int8-activations", action="store_true",
                   help="also each quantized mode built with --cpu-int8-activations (\"mode/i8\": its decode "
                        "GEMVs on int8 activations; the positions are decoded one token at a time)")
    args = p.parse_args(argv)
    from rwkv_relax import load_model
    from rwkv_relax.pipeline import build
    from rwkv_relax.registry import get_spec
    from rwkv_relax.testing.quality import compare, position_logits
    from rwkv_relax.testing.random_weights import write_checkpoint
    work = Path(tempfile.mkdtemp(prefix="rwkv_quality_"))
    ckpt = args.checkpoint or write_checkpoint(
        get_spec(args.model_type).random_tensors(n_layer=2, n_embd=256, vocab_size=4096), work / "model.pth")
    base = load_model(build(str(ckpt), output=work / "q0f32.so", quantization="q0f32"), ckpt)
    tokens = np.random.default_rng(0).integers(0, base.vocab_size, args.positions)
    ref = position_logits(base, tokens)
    print(f"{'mode':16s} {'mean KL':>10s} {'max KL':>10s} {'top-1':>7s}")
    for mode in args.modes.split(","):
        for i, (label, extra) in enumerate(build_variants(mode, args.ab_dense, args.cpu_int8_activations)):
            lib = build(str(ckpt), output=work / f"{mode}-{i}.so", quantization=mode, **extra)
            r = compare(ref, position_logits(load_model(lib, ckpt), tokens))
            print(f"{label:16s} {r['mean_kl']:10.5f} {r['max_kl']:10.5f} {r['top1']:7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
