"""Decode / prefill speed of our llvm build against the `rwkv` package, measured in one run.

    python tools/bench.py                       # RWKV-5, 12 x 768, vocab 65536, fp32
    python tools/bench.py --model-type rwkv4 --layers 12 --embd 768

Prints tok/s for both, their ratio, and the bandwidth ceiling: the weight bytes one decode step
must read, divided by the measured streaming-read bandwidth (what decode does to its weights: a
TVM kernel on the model's own thread pool reads a 256 MiB buffer). STREAM copy bandwidth (read +
write counted) is printed too, with the share of the ceiling it would give. ``--modes`` times
several quantization modes; they are timed in interleaved rounds (with the bandwidth probes) and
each keeps its best tok/s, so a slow minute on a shared machine does not land on one mode; the
share of the ceiling pairs each round's decode with that round's probes. CPU peers built outside
the repo time in the same rounds: llama.cpp (``--llama-cpp``, RWKV-7; tools/llama_cpp_peer.py) and
rwkv.cpp (``--rwkv-cpp DIR``, v4 to v7; tools/rwkv_cpp_peer.py), each type against our matching mode.
Benchmarks, not tests: numbers vary run to run.
"""
from __future__ import annotations

import argparse
import functools
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


_READ_WORDS = 64 * 2**20  # uint32 words: 256 MiB, 8x a 32 MiB L3


@functools.cache
def _read_kernel(prefetch_words: int):
    import tvm
    from tvm.script import tirx as T
    n, tasks, lanes = _READ_WORDS, 64, 16
    per_task = n // tasks

    @T.prim_func
    def read_all(a: T.Buffer((n,), "uint32"), o: T.Buffer((tasks, lanes), "uint32")):
        T.func_attr({"tirx.noalias": True})
        for t in T.parallel(tasks):
            for lane in T.vectorized(lanes):
                o[t, lane] = T.uint32(0)
            for i in range(per_task // lanes):
                if prefetch_words > 0:
                    T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(
                        a[T.min(t * per_task + i * lanes + prefetch_words, n - 1)]),
                        T.int32(0), T.int32(3), T.int32(1)))
                for lane in T.vectorized(lanes):  # XOR: nothing for the compiler to skip
                    o[t, lane] = o[t, lane] ^ a[t * per_task + i * lanes + lane]

    cpu = tvm.get_global_func("target.llvm_get_system_cpu")()
    return tvm.compile(tvm.IRModule({"main": read_all}), {"kind": "llvm", "mcpu": cpu})["main"]


@functools.cache
def _read_buffers():
    import tvm
    return (tvm.runtime.tensor(np.ones(_READ_WORDS, np.uint32)),
            tvm.runtime.tensor(np.zeros((64, 16), np.uint32)))


def read_bandwidth(repeats: int = 3) -> float:
    """Streaming-read bytes/s on TVM's thread pool (the one the model's kernels run on), best of
    hardware-only and software (4 KiB ahead) prefetch: the ceiling for a decode step, which only
    reads its weights."""
    a, o = _read_buffers()
    best = 0.0
    for prefetch in (0, 1024):
        fn = _read_kernel(prefetch)
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(a, o)
            best = max(best, 4 * _READ_WORDS / (time.perf_counter() - t0))
    return best


def probe_bandwidths() -> tuple[float, float]:
    """(read, copy) bytes/s, measured now."""
    return read_bandwidth(repeats=2), copy_bandwidth(repeats=2)


def ceiling_shares(tok_s: float, nbytes: int, bandwidths: tuple[float, float]) -> np.ndarray:
    """Share of the (read, copy) bandwidth ceilings that ``tok_s`` decode steps of ``nbytes`` reach."""
    return tok_s * nbytes / np.asarray(bandwidths)


def timed(fn, repeats: int) -> float:
    """Best-of-3 mean seconds per call over ``repeats`` calls."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - t0) / repeats)
    return best


def decode_weight_bytes(params: dict, ffn_zeros: list[float] | None = None) -> int:
    """Bytes one decode step reads: every weight except the embedding table (one row of it) and,
    with ``ffn_zeros`` (per layer), the rows of the hidden-major channel-mix value (``*_t``) that
    the sparse kernel skips."""
    total = 0
    for name, (shape, dtype) in params.items():
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if name.startswith("embeddings."):
            n //= shape[0]
        elif ffn_zeros is not None and name.endswith("_t") and ".ffn.value." in name:
            n = int(n * (1 - ffn_zeros[int(name.split(".")[1])]))
        total += n
    return total


def prefill_flops_per_token(params: dict) -> float:
    """2 x the weights every prefill token multiplies (the head runs on the last token only)."""
    return 2.0 * sum(shape[0] * shape[1] for name, (shape, _) in params.items()
                     if len(shape) == 2 and not name.startswith(("embeddings.", "head.")))


@functools.cache
def fma_peak() -> float:
    """fp32 FLOP/s of independent vector FMA chains on TVM's thread pool (the prefill ceiling)."""
    import tvm
    from tvm.script import tirx as T

    from rwkv_relax.runtime.threads import use_all_cpus
    n_threads, chains, lanes, iters = use_all_cpus(), 16, 16, 2_000_000

    @T.prim_func
    def fmas(x: T.Buffer((2,), "float32"), o: T.Buffer((n_threads, chains, lanes), "float32")):
        T.func_attr({"tirx.noalias": True})
        for t in T.parallel(n_threads):
            acc = T.alloc_buffer((chains, lanes), "float32", scope="local")
            for c in T.unroll(chains):
                for lane in T.vectorized(lanes):
                    acc[c, lane] = T.Cast("float32", c)
            for _ in range(iters):
                for c in T.unroll(chains):
                    for lane in T.vectorized(lanes):
                        acc[c, lane] = acc[c, lane] * x[0] + x[1]
            for c in T.unroll(chains):
                for lane in T.vectorized(lanes):
                    o[t, c, lane] = acc[c, lane]

    cpu = tvm.get_global_func("target.llvm_get_system_cpu")()
    fn = tvm.compile(tvm.IRModule({"main": fmas}), {"kind": "llvm", "mcpu": cpu})["main"]
    x = tvm.runtime.tensor(np.array([0.999999, 1e-7], np.float32))
    o = tvm.runtime.tensor(np.zeros((n_threads, chains, lanes), np.float32))
    fn(x, o)
    return 2 * n_threads * chains * lanes * iters / timed(lambda: fn(x, o), 1)


LLAMA_PAIRS = {"f32": "q0f32", "f16": "q0f16", "q8_0": "q8f16_1", "q4_0": "q4f16_1"}  # peer type: our mode
RWKV_CPP_PAIRS = {"FP32": "q0f32", "FP16": "q0f16", "Q8_0": "q8f16_1", "Q4_0": "q4f16_1"}


def print_peer(name: str, peer_best: dict, pairs: dict, by_name: dict, prefill_note) -> None:
    """One line per peer type: its best decode / prefill and our matching mode's ratios;
    ``prefill_note(tok_s)`` appends to each prefill figure (llama.cpp: the share of the FMA peak)."""
    for kind, (dec, pre) in peer_best.items():
        ours = by_name.get(f"ours (llvm {pairs.get(kind, '')})")
        line = f"{name} {kind:5s} decode {dec:7.2f} tok/s, prefill {pre:7.1f} tok/s{prefill_note(pre)}"
        if ours:
            line += (f"; ours {pairs[kind]} / {name} {kind}: decode {ours[1] / dec:.2f}x, prefill "
                     f"{ours[2] / pre:.2f}x{prefill_note(ours[2])}")
        print(line)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from rwkv_relax.registry import VERSIONS
    p.add_argument("--model-type", "--arch", dest="model_type", default="rwkv5", choices=list(VERSIONS),
                   help="the RWKV version of the random checkpoint")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--embd", type=int, default=768)
    p.add_argument("--vocab", type=int, default=65536)
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--decode-steps", type=int, default=16)
    p.add_argument("--checkpoint", default=None, help="use this .pth instead of a random one")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--modes", default="q0f32",
                   help="comma-separated quantization modes to time (e.g. q0f32,q0f16,q8f16_1,q4f16_1)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds over the modes")
    p.add_argument("--llama-cpp", default=None, metavar="PYTHON",
                   help="RWKV-7 only: also time llama.cpp, through this interpreter's llama_cpp "
                        "(llama-cpp-python built on this machine; see tools/llama_cpp_peer.py)")
    p.add_argument("--llama-cpp-convert", default=None, metavar="PATH",
                   help="llama.cpp's convert_hf_to_gguf.py (vendor/llama.cpp/ in the llama-cpp-python sdist)")
    p.add_argument("--llama-cpp-types", default="f32,f16,q8_0", help="GGUF types to time")
    p.add_argument("--rwkv-cpp", default=None, metavar="DIR",
                   help="RWKV v4-v7: also time rwkv.cpp built in DIR (its Python wrapper is DIR/src/python, which "
                        "finds the library; run with python3; see tools/rwkv_cpp_peer.py)")
    p.add_argument("--rwkv-cpp-types", default="FP32,FP16,Q8_0,Q4_0",
                   help="rwkv.cpp types to time (quantized ones made from FP16); paired with our "
                        "q0f32, q0f16, q8f16_1, q4f16_1")
    p.add_argument("--ffn-sparsity", type=float, default=None, metavar="P",
                   help="shift the random checkpoint's ffn.key rows so that a fraction P (>= 0.5) of channel-mix "
                        "hidden units is zero on typical inputs (tools/ffn_sparsity.py); prints the measured "
                        "fraction per layer")
    p.add_argument("--ab-dense", action="store_true",
                   help="time every mode with the sparse channel-mix value (ffn_value_layout=hidden_major) and "
                        "with the dense one (the default), in the same rounds: the sparse kernel's A/B")
    p.add_argument("--cpu-int8-activations", action="store_true",
                   help="also time every quantized mode built with --cpu-int8-activations (as \"mode/i8\"), "
                        "in the same rounds: the int8-activation GEMVs' A/B against the exact ones")
    p.add_argument("--tokenizer", action="store_true",
                   help="also time World tokenizer encode against ChatRWKV's TRIE_TOKENIZER (1 MB)")
    args = p.parse_args(argv)

    from rwkv_relax import load_model
    from rwkv_relax.pipeline import build, export, resolve_model
    from rwkv_relax.registry import get_spec
    from rwkv_relax.runtime.threads import use_all_cpus
    from rwkv_relax.testing.random_weights import write_checkpoint
    from rwkv_relax.testing.reference import ChatRWKVProcess

    use_all_cpus()  # the bandwidth probes run on the model's thread pool
    work = Path(tempfile.mkdtemp(prefix="rwkv_bench_"))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import ffn_sparsity
    import quant_quality
    rng = np.random.default_rng(0)
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
    else:
        tensors = get_spec(args.model_type).random_tensors(n_layer=args.layers, n_embd=args.embd,
                                                           vocab_size=args.vocab)
        if args.ffn_sparsity is not None:
            tensors = ffn_sparsity.sparsify(tensors, args.ffn_sparsity, args.layers, rng)
        ckpt = write_checkpoint(tensors, work / "model.pth")
    prompt = rng.integers(0, args.vocab, args.prefill).tolist()
    zeros = ffn_sparsity.zero_fractions(ckpt, prompt[:64])
    rwkv_files = {}
    if args.rwkv_cpp:  # before the builds: an unsupported version or a bad DIR stops here
        import rwkv_cpp_peer
        rwkv_files = rwkv_cpp_peer.convert(ckpt, work / "rwkv_cpp", Path(args.rwkv_cpp),
                                           args.rwkv_cpp_types.split(","))
    models, build_s = {}, {}
    for mode in args.modes.split(","):
        for i, (label, extra) in enumerate(quant_quality.build_variants(mode, args.ab_dense,
                                                                        args.cpu_int8_activations)):
            t0 = time.perf_counter()
            lib = build(str(ckpt), target="llvm", output=work / f"model-{mode}-{i}.so", quantization=mode, **extra)
            build_s[label] = time.perf_counter() - t0
            models[label] = load_model(lib, ckpt)
    # Rounds interleave the modes (and the bandwidth probes): on a shared machine throughput
    # drifts by tens of percent over minutes, and timing the modes one after another would
    # hand that drift to whichever mode ran in a slow minute. tok/s: best per mode over the
    # rounds. Share of the ceiling: each round's decode against that round's probe (a neighbour
    # taking memory bandwidth moves the ceiling more than a compute-bound decode), median over
    # rounds.
    best = {mode: [0.0, 0.0] for mode in models}
    shares = {mode: [] for mode in models}
    bandwidth = copy_bw = 0.0
    bytes_per_step = {}
    states = {}
    peer, ggufs = None, {}
    if args.llama_cpp:
        import llama_cpp_peer  # tools/ is on sys.path when this file runs as a script
        if args.model_type != "rwkv7" or not args.llama_cpp_convert:
            p.error("--llama-cpp times RWKV-7 and needs --llama-cpp-convert")
        ggufs = llama_cpp_peer.convert(ckpt, work / "llama", args.llama_cpp, args.llama_cpp_convert,
                                       args.llama_cpp_types.split(","))
        peer = llama_cpp_peer.Peer(args.llama_cpp, threads=use_all_cpus())
    rwkv_peer = rwkv_cpp_peer.Peer("python3", args.rwkv_cpp, threads=use_all_cpus()) if rwkv_files else None
    # (server, its files per type, best [decode, prefill] per type, lowest decode token id)
    peers = {"llama.cpp": (peer, ggufs, {t: [0.0, 0.0] for t in ggufs}, 1),
             "rwkv.cpp": (rwkv_peer, rwkv_files, {t: [0.0, 0.0] for t in rwkv_files}, 0)}
    for mode, model in models.items():
        params = {p["name"]: (p["shape"], p["dtype"]) for p in model.metadata["params"]}
        bytes_per_step[mode] = decode_weight_bytes(params, zeros)
        states[mode] = model.new_state()
        model.advance(states[mode], prompt[:8])
    for _ in range(args.rounds):
        probes = probe_bandwidths()
        bandwidth, copy_bw = max(bandwidth, probes[0]), max(copy_bw, probes[1])
        for mode, model in models.items():
            st = states[mode]
            decode = 1 / timed(lambda: model.advance(st, [int(rng.integers(args.vocab))]), args.decode_steps)
            prefill = args.prefill / timed(lambda: model.advance(model.new_state(), prompt), 1)
            best[mode] = [max(best[mode][0], decode), max(best[mode][1], prefill)]
            shares[mode].append(ceiling_shares(decode, bytes_per_step[mode], probes))
        for server, files, peer_best, low in peers.values():  # the peers in the same rounds, same prompt
            for kind, path in files.items():
                pre, dec = server.round(path, prompt, rng.integers(low, args.vocab, args.decode_steps).tolist())
                peer_best[kind] = [max(peer_best[kind][0], dec), max(peer_best[kind][1], pre)]
    rows = []
    for mode in models:
        rows.append((f"ours (llvm {mode})", *best[mode], bytes_per_step[mode], np.median(shares[mode], axis=0)))
    for server, *_ in peers.values():
        if server is not None:
            server.close()
    float_params = {p["name"]: (p["shape"], p["dtype"]) for p in export(resolve_model(str(ckpt)), "q0f32")[1]["params"]}
    flops = prefill_flops_per_token(float_params)
    models = states = None

    if not args.skip_reference:
        ref = ChatRWKVProcess(ckpt, v7=args.model_type == "rwkv7")
        _, rstate = ref.forward(prompt[:8], None)

        def ref_step():
            nonlocal rstate
            _, rstate = ref.forward([int(rng.integers(args.vocab))], rstate)
        fp32_bytes = decode_weight_bytes(float_params)
        probes = probe_bandwidths()
        decode = 1 / timed(ref_step, args.decode_steps)
        rows.append(("rwkv package (cpu fp32)", decode, args.prefill / timed(lambda: ref.forward(prompt, None), 1),
                     fp32_bytes, ceiling_shares(decode, fp32_bytes, probes)))

    print("channel-mix zeros per layer (relu(K x)^2 == 0, 64 tokens): "
          + " ".join(f"{z:.2f}" for z in zeros) + f"; mean {np.mean(zeros):.3f}")
    print(f"model: {args.model_type} {args.layers} x {args.embd}, vocab {args.vocab}; build "
          + ", ".join(f"{m} {t:.1f} s" for m, t in build_s.items()))
    print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s (copy {copy_bw / 1e9:.1f} GB/s, read + write counted), "
          "best round; ceiling = read bandwidth / weight bytes read per decode step; % ceil: median over "
          "rounds of decode against the same round's probe")
    print(f"{'':28s} {'MiB/token':>10s} {'ceiling':>8s} {'decode tok/s':>13s} {'% ceil':>7s} "
          f"{'% copy ceil':>12s} {'prefill tok/s':>14s}")
    for name, dec, pre, nbytes, share in rows:
        print(f"{name:28s} {nbytes / 2**20:10.1f} {bandwidth / nbytes:8.1f} {dec:13.2f} {100 * share[0]:6.0f}% "
              f"{100 * share[1]:11.0f}% {pre:14.1f}")
    by_name = {r[0]: r for r in rows}
    base = by_name.get("ours (llvm q0f32)")
    ref = by_name.get("rwkv package (cpu fp32)")
    if base and ref:
        print(f"ours q0f32 / rwkv package: decode {base[1] / ref[1]:.2f}x, prefill {base[2] / ref[2]:.2f}x")
    if base:
        for name, dec, pre, *_ in rows:
            if name.startswith("ours") and name != base[0] and "/dense" not in name:
                print(f"{name} / ours q0f32: decode {dec / base[1]:.2f}x, prefill {pre / base[2]:.2f}x")
    for name, dec, pre, nbytes, share in rows:  # the A/B: sparse value kernel vs the dense layout
        dense = by_name.get(name.replace(")", "/dense)"))
        if "/dense" not in name and dense:
            print(f"{name} sparse / dense: decode {dec / dense[1]:.2f}x, prefill {pre / dense[2]:.2f}x; "
                  f"bytes per step {nbytes / 2**20:.1f} vs {dense[3] / 2**20:.1f} MiB; "
                  f"{100 * share[0] * dense[3] / nbytes:.0f}% of the dense read ceiling")
    if ggufs:
        peak = fma_peak()
        print(f"llama.cpp (llama-cpp-python, {use_all_cpus()} threads), best round; FMA peak "
              f"{peak / 1e9:.0f} GFLOP/s (measured), prefill work {flops / 1e6:.0f} MFLOP/token (matmuls, no head)")
        print_peer("llama.cpp", peers["llama.cpp"][2], LLAMA_PAIRS, by_name,
                   lambda tok_s: f" ({100 * tok_s * flops / peak:.0f}% FMA peak)")
    if rwkv_files:
        print(f"rwkv.cpp ({use_all_cpus()} threads), best round; prefill: one eval_sequence_in_chunks call "
              f"over the {args.prefill}-token prompt (chunk = prompt), decode: one eval call per token")
        print_peer("rwkv.cpp", peers["rwkv.cpp"][2], RWKV_CPP_PAIRS, by_name, lambda tok_s: "")
    if args.tokenizer:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_tokenizer  # pylint: disable=import-outside-toplevel
        bench_tokenizer.main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
