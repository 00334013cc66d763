"""Find the first layer where OUR compiled model leaves the reference, and which sub-step.

    python tools/dump_intermediate.py --model RWKV-5-World-0.1B.pth --quantization q0f16
    python tools/dump_intermediate.py --model m.pth --quantization q4f16_1 --text "Hello"
    python tools/dump_intermediate.py --model broken.pth --reference-checkpoint clean.pth

For each layer it prints, for the ln1 output, the time-mix (attention) output and the channel-mix
(FFN) output, max|ours - reference|, max|reference|, their ratio and any NaN/Inf, and stops at
the first sub-step past the tolerance (max|ours - ref| <= tol * max|ref|; default 1e-4 for fp32
activations, 1e-2 for fp16). Exit status: 0 all within tolerance, 1 a divergence, 2 bad input.

OUR side is a debug build of the model (llvm, this machine's CPU): the same nn.Module as the
library, compiled with one extra function that also returns every layer's sub-step outputs
(rwkv_relax/debug.py). It runs on the weights exactly as the library would load them
(quantized per --quantization).

The REFERENCE is the version's float64 numpy RWKV (rwkv_relax/versions/<v>/reference.py) on those same
weights, de-quantized, so every quantization mode and fp16 is checked against exact math: what
differs is the compiled code (fp16 overflow or rounding, a wrong kernel), not the quantization.
With --reference-checkpoint the reference uses that checkpoint's weights instead (quantized the
same way), to find the layer where two checkpoints part. The ChatRWKV `rwkv` package exposes
only logits, not per-layer values: --chatrwkv (q0f32, BlinkDL .pth) additionally compares the
final logits of ours and of the numpy model with it, which validates the numpy reference.
The numpy model holds every weight in float64: use it on small and medium models.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rwkv_relax.cli import add_config_flags, config_overrides, one_line_errors

DEFAULT_TOKENS = 16  # pseudo-random ids (seed 0) when neither --tokens nor --text is given


def parse_tokens(text: str) -> list[int]:
    from rwkv_relax.errors import RWKVRelaxError
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise RWKVRelaxError(f"--tokens takes comma-separated integers, not '{text}'") from None
    if not ids:
        raise RWKVRelaxError("--tokens is empty; give at least one token id")
    return ids


def encode_text(text: str, model: str, tokenizer: str | None, model_type: str) -> list[int]:
    """``text`` through the tokenizer: --tokenizer, else one next to the checkpoint, else (RWKV-5
    World) the World vocab shipped in the rwkv package."""
    from rwkv_relax.errors import RWKVRelaxError
    from rwkv_relax.model_dir import find_tokenizer
    from rwkv_relax.tokenizer import default_world_vocab, load_tokenizer
    found = find_tokenizer(model, tokenizer)
    path = found[0] if found else (default_world_vocab() if model_type != "rwkv4" else None)
    if path is None:
        raise RWKVRelaxError("--text needs a tokenizer: pass --tokenizer (a World vocab .txt or a "
                             "tokenizer.json), or use --tokens")
    return load_tokenizer(path).encode(text)


def fmt(x: float) -> str:
    return f"{x:10.3e}" if math.isfinite(x) else f"{str(x):>10s}"


def print_rows(rows) -> None:
    print(f"{'layer':>5s}  {'sub-step':<19s} {'max|diff|':>10s} {'max|ref|':>10s} {'rel':>10s} "
          f"{'NaN/Inf ours/ref':>17s}  ")
    for r in rows:
        layer = "-" if r.layer is None else str(r.layer)
        step = "logits" if r.layer is None else r.title.split(", ", 1)[1]
        bad = f"{r.ours_nonfinite}/{r.ref_nonfinite}"
        print(f"{layer:>5s}  {step:<19s} {fmt(r.max_abs)} {fmt(r.scale)} {fmt(r.rel)} {bad:>17s}  "
              f"{'ok' if r.ok else 'FAIL'}")


def chatrwkv_logits(model: str, tokens: list[int]) -> np.ndarray:
    from rwkv_relax.errors import RWKVRelaxError
    from rwkv_relax.testing.reference import ChatRWKVProcess
    from rwkv_relax.weights import open_weights
    if Path(model).suffix != ".pth":
        raise RWKVRelaxError("--chatrwkv needs a BlinkDL .pth checkpoint (the rwkv package reads only those)")
    ref = ChatRWKVProcess(model, v7=open_weights(model).spec.name == "rwkv7")
    try:
        return ref.forward(tokens)[0]
    finally:
        ref.close()


@one_line_errors
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python tools/dump_intermediate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint (.pth, HF folder/file) or params directory")
    p.add_argument("--quantization", default=None,
                   help="q0f32, q0f16, q4f16_1, q4f32_1, q8f16_1 (default: the params directory's, else q0f32)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--tokens", default=None, help='comma-separated token ids, e.g. "1,2,3"')
    src.add_argument("--text", default=None, help="text to tokenize (see --tokenizer)")
    p.add_argument("--tokenizer", default=None, help="World vocab .txt or tokenizer.json for --text")
    p.add_argument("--tol", type=float, default=None,
                   help="relative tolerance, max|ours-ref| <= tol * max|ref| (default 1e-4 fp32, 1e-2 fp16)")
    p.add_argument("--reference-checkpoint", default=None,
                   help="take the reference's weights from this checkpoint instead of --model's")
    p.add_argument("--chatrwkv", action="store_true",
                   help="also compare the final logits with the rwkv package (q0f32 only)")
    p.add_argument("--lib", default=None,
                   help="a production library of the same model: check that its prefill logits "
                        "match the debug build's")
    p.add_argument("--keep-going", action="store_true", help="do not stop at the first failing step")
    p.add_argument("--cache-dir", default=None,
                   help="keep debug builds here (one per shape and quantization; default: a temp dir)")
    add_config_flags(p)
    args = p.parse_args(argv)

    from rwkv_relax import debug, load_model
    from rwkv_relax.errors import RWKVRelaxError
    from rwkv_relax.quantization import get_mode

    tokens = parse_tokens(args.tokens) if args.tokens else None  # bad ids fail before any loading
    source = debug.resolve_weights(args.model, config_overrides(args))
    if source.quantization and args.quantization and args.quantization != source.quantization:
        raise RWKVRelaxError(f"{args.model} holds {source.quantization} weights, not {args.quantization}")
    quantization = args.quantization or source.quantization or "q0f32"
    mode = get_mode(quantization)
    if args.chatrwkv and quantization != "q0f32":
        raise RWKVRelaxError("--chatrwkv compares with ChatRWKV's cpu fp32 model: use --quantization q0f32")
    tol = args.tol if args.tol is not None else debug.default_tolerance(quantization)

    cfg = source.config
    if args.text is not None:
        tokens = encode_text(args.text, args.model, args.tokenizer, source.spec.name)
    elif tokens is None:
        tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, DEFAULT_TOKENS).tolist()

    with tempfile.TemporaryDirectory(prefix="rwkv_relax_debug_") as tmp:
        t0 = time.perf_counter()
        lib = debug.debug_library_for(source, quantization, args.cache_dir or tmp,
                                      source.keep_embedding_head)
        build_s = time.perf_counter() - t0
        ours_model = debug.DebugModel(lib, args.model)
        ours = ours_model.trace(tokens)
        ref_params = None
        if args.reference_checkpoint:
            ref_params = debug.library_params(debug.DebugModel(lib, args.reference_checkpoint))
        ref = debug.reference_trace(ours_model, tokens, ref_params)

    print(f"model: {args.model} ({source.spec.name}, {cfg.n_layer} layers x {cfg.n_embd}, "
          f"{quantization}, {mode.act_dtype} activations); {len(tokens)} tokens; "
          f"debug build {build_s:.1f} s")
    weights = f"{args.reference_checkpoint}'s" if args.reference_checkpoint else "the same"
    print(f"reference: float64 numpy model on {weights} weights"
          f"{', de-quantized' if mode.quantized else ''}; tolerance {tol:g} x max|ref| per tensor")
    rows = debug.compare(ours, ref, tol, stop=not args.keep_going)
    print_rows(rows)
    failed = debug.first_failure(rows)

    if args.lib:
        prod = load_model(args.lib, args.model).prefill(tokens)[0]
        d = float(np.abs(prod - ours[0]).max())
        print(f"production library {args.lib} vs debug build, logits: max|diff| {d:.3e}")
    if args.chatrwkv:
        theirs = chatrwkv_logits(args.model, tokens)
        scale = float(np.abs(theirs).max())
        print(f"rwkv package (cpu fp32) logits vs ours: max|diff| {np.abs(ours[0] - theirs).max():.3e}, "
              f"vs the numpy reference: {np.abs(ref[0] - theirs).max():.3e} (max|logit| {scale:.3g})")

    if failed is None:
        print(f"all {cfg.n_layer} layers and the logits within tolerance")
        return 0
    overflow = failed.ours_nonfinite > failed.ref_nonfinite
    print(f"FIRST DIVERGENCE: {failed.title}: "
          + (f"{failed.ours_nonfinite} NaN/Inf in ours (reference: {failed.ref_nonfinite})" if overflow else
             f"max|diff| {failed.max_abs:.3e} = {failed.rel:.3g} x max|ref| > tol {tol:g}"))
    if overflow and mode.act_dtype == "float16" and failed.layer is not None:
        print(f"hint: fp16 overflow; keep that layer in fp32 (--fp32-layers {failed.layer}) or set "
              "rescale_every (--overrides rescale_every=6)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
