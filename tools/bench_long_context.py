"""Long prompts: prefill cost per token and resident memory stay flat with length.

    python tools/bench_long_context.py                          # random 2 x 64 RWKV-5, 100K tokens
    python tools/bench_long_context.py --model RWKV-5-World-0.1B.pth --lengths 1000,10000
    python tools/bench_long_context.py --model m.pth --lib m.so --json

Feeds one stream of random token ids into one sequence (``CompiledModel.advance``: chunks of
prefill_chunk_size, state updated in place) and, when the stream reaches each of ``--lengths``
tokens, records the time per token since the previous mark, the process's resident memory
(VmRSS and its peak VmHWM from /proc/self/status; ru_maxrss where there is no /proc) and the
bytes of the sequence's state. An RNN's state does not grow with the context, so neither should
the memory, and every token costs the same. Benchmarks, not tests: times vary run to run.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_LENGTHS = "10,1000,10000,100000"


def memory() -> dict[str, int]:
    """Resident bytes now (``rss``) and at peak (``hwm``) for this process."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        return {"rss": int(fields["VmRSS"].split()[0]) * 1024, "hwm": int(fields["VmHWM"].split()[0]) * 1024}
    except (OSError, KeyError):  # no /proc (macOS): only the peak is known; ru_maxrss is bytes there
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak *= 1 if sys.platform == "darwin" else 1024
        return {"rss": peak, "hwm": peak}


def read_states(model, state) -> dict[str, np.ndarray]:
    """``{"<layer>.<name>": array}``: every state tensor of the sequence (copies)."""
    return {f"{layer}.{name}": model.read_state(state, layer, name)
            for layer in range(model.n_layer) for name in model.state_names}


def run(model, lengths: list[int], seed: int = 0) -> list[dict]:
    """Advance one fresh sequence to each of ``lengths`` (increasing) in turn; one record per mark,
    with ``state`` as ``{"<layer>.<name>": [shape, dtype, nbytes]}``."""
    ids = np.random.default_rng(seed).integers(0, model.vocab_size, max(lengths)).astype(np.int32)
    state = model.new_state()
    records, done = [], 0
    for mark in lengths:
        t0 = time.perf_counter()
        logits = model.advance(state, ids[done:mark])
        seconds = time.perf_counter() - t0
        states = read_states(model, state)
        layout = {k: [list(v.shape), str(v.dtype), int(v.nbytes)] for k, v in states.items()}
        records.append({"tokens": mark, "segment_tokens": mark - done, "segment_seconds": seconds,
                        "us_per_token": 1e6 * seconds / (mark - done), **memory(),
                        "state": layout, "state_bytes": sum(v.nbytes for v in states.values()),
                        "state_length": state.length, "logits_finite": bool(np.isfinite(logits).all()),
                        "state_finite": all(bool(np.isfinite(v).all()) for v in states.values())})
        done = mark
    return records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint (default: a random RWKV-5, see --layers/--embd)")
    p.add_argument("--lib", default=None, help="llvm library for --model (default: build one)")
    from rwkv_relax.registry import VERSIONS
    p.add_argument("--model-type", default="rwkv5", choices=[v for v in VERSIONS if v != "rwkv4"],
                   help="the RWKV version of the random checkpoint")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--embd", type=int, default=64)
    p.add_argument("--head-size", type=int, default=32)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--lengths", default=DEFAULT_LENGTHS, help=f"token marks (default {DEFAULT_LENGTHS})")
    p.add_argument("--json", action="store_true", help="print the records as JSON instead of a table")
    args = p.parse_args(argv)
    lengths = sorted({int(x) for x in args.lengths.split(",")})

    from rwkv_relax import load_model
    from rwkv_relax.pipeline import build

    with tempfile.TemporaryDirectory(prefix="rwkv_long_") as tmp:
        ckpt = args.model
        if ckpt is None:
            from rwkv_relax.registry import get_spec
            from rwkv_relax.testing.random_weights import write_checkpoint
            shape = dict(n_layer=args.layers, n_embd=args.embd, vocab_size=args.vocab, head_size=args.head_size)
            ckpt = write_checkpoint(get_spec(args.model_type).random_tensors(**shape), Path(tmp) / "model.pth")
        lib = args.lib or build(str(ckpt), target="llvm", output=Path(tmp) / "model.so")
        model = load_model(lib, ckpt, max_sequences=1, max_history=1)
    before = memory()
    records = run(model, lengths)
    if args.json:
        print(json.dumps({"model": args.model or "random", "prefill_chunk_size": model.chunk, "loaded": before,
                          "records": records}))
        return 0
    cfg = model.metadata["model_config"]
    print(f"model: {args.model or 'random checkpoint'} ({model.metadata['model_type']}, "
          f"{model.n_layer} x {cfg['n_embd']}, "
          f"{model.metadata['quantization']}), prefill chunks of {model.chunk}; "
          f"RSS after loading {before['rss'] / 2**20:.1f} MiB")
    print(f"{'tokens':>8s} {'us/token':>9s} {'from':>8s} {'RSS MiB':>9s} {'peak MiB':>9s} {'state KiB':>10s}")
    for r in records:
        print(f"{r['tokens']:8d} {r['us_per_token']:9.1f} {r['tokens'] - r['segment_tokens']:8d} "
              f"{r['rss'] / 2**20:9.1f} {r['hwm'] / 2**20:9.1f} {r['state_bytes'] / 2**10:10.1f}")
    first, last = records[0], records[-1]
    print(f"RSS {first['tokens']} -> {last['tokens']} tokens: {100 * (last['rss'] / first['rss'] - 1):+.2f}%; "
          f"state bytes {'unchanged' if first['state'] == last['state'] else 'CHANGED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
