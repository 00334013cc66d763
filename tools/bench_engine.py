"""Engine.generate against the compiled step alone, and the functional ``decode`` against the
in-place ``advance``, measured in one run.

    python tools/bench_engine.py                 # 2 x 256 and 12 x 768 RWKV-5, vocab 65536, q4f16_1
    python tools/bench_engine.py --shapes 2x256 --rounds 5

For each random World-vocabulary checkpoint (built once into --cache, reused by later runs) it
times, in interleaved rounds so that a neighbour's busy minute lands on every contender alike:

- ``advance``: ``CompiledModel.advance(state, [token])``, the raw in-place step, on the engine's
  model (one history entry per sequence) and on one with the default history (``adv h4``);
- ``decode``: ``logits, state = model.decode(token, state)``, the functional API, and
  ``fork+adv``: the same step as decode took it before it stepped in place (fork, advance the
  fork, drop the old sequence);
- ``generate``: ``Engine.generate`` decode tok/s (its own ``stats``: sampling, detokenizing and
  stop-string work included, prefill excluded) with the model directory's sampling defaults;
- ``sampler``: ``Sampler.sample`` + ``accept`` on the model's logits (ms per token), in numpy
  (``numpy``) and in the library (``lib``: ``CompiledModel.sample``, the ``sample_logits`` kernel
  of ``tir_kernels/sampling.py``, which ``generate`` uses where the library carries it).

Rates are the best round's; ratios are the median over rounds of each round's own ratio (its
contenders ran seconds apart). Benchmarks, not tests: numbers vary run to run.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

QUANT = "q4f16_1"
VOCAB = 65536


def prepare(cache: Path, n_layer: int, n_embd: int) -> tuple[Path, Path]:
    """(model directory, library) of a random RWKV-5 World checkpoint, built once into ``cache``."""
    from rwkv_relax.model_dir import convert, gen_config
    from rwkv_relax.pipeline import build
    from rwkv_relax.registry import get_spec
    from rwkv_relax.runtime.tokenizers.common import default_world_vocab
    from rwkv_relax.testing.random_weights import write_checkpoint

    vocab = default_world_vocab()
    if vocab is None:
        raise SystemExit("error: the World vocabulary ships with the rwkv package; pip install rwkv")
    name = f"rwkv5-{n_layer}x{n_embd}-{QUANT}"
    model_dir, lib = cache / name, cache / f"{name}.so"
    if not lib.is_file():
        ckpt = cache / f"{name}.pth"
        if not ckpt.is_file():
            tensors = get_spec("rwkv5").random_tensors(n_layer=n_layer, n_embd=n_embd, vocab_size=VOCAB,
                                                       seed=0)
            write_checkpoint(tensors, ckpt)
        gen_config(str(ckpt), QUANT, "rwkv-world", model_dir, tokenizer=str(vocab))
        convert(str(ckpt), QUANT, model_dir)
        build(str(model_dir), target="llvm", output=lib)
    return model_dir, lib


def calls_per_second(fn, steps: int) -> float:
    """Calls per second of ``fn`` over ``steps`` calls."""
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return steps / (time.perf_counter() - t0)


def bench_shape(cache: Path, shape: str, rounds: int, steps: int) -> dict[str, float]:
    from rwkv_relax.runtime.engine import Engine
    from rwkv_relax.runtime.model import CompiledModel

    n_layer, n_embd = (int(x) for x in shape.split("x"))
    model_dir, lib = prepare(cache, n_layer, n_embd)
    engine = Engine(model_dir, lib)  # one history entry per sequence, as the engine runs
    functional = CompiledModel(lib, model_dir)  # the default history (4), as load_model gives
    rng = np.random.default_rng(0)
    prompt = "The Eiffel tower is in the city of"
    ids = engine.encode(prompt)
    states = {"advance": engine.model.new_state(), "advance h4": functional.new_state()}
    engine.model.advance(states["advance"], ids)
    functional.advance(states["advance h4"], ids)
    states["decode"] = functional.prefill(ids)[1]
    states["fork+advance"] = functional.prefill(ids)[1]
    sampler = engine.sampler(seed=0)
    raw = engine.model.advance_raw(engine.model.new_state(), ids)
    logits = engine.model._host(raw).reshape(-1).copy()
    raw_view = engine.model._host(raw).reshape(-1)

    def sample_in_library():  # the kernel consumes its logits: put them back first (~5 us, counted)
        np.copyto(raw_view, logits)
        sampler.accept(engine.model.sample(raw, sampler))

    def token() -> int:
        return int(rng.integers(VOCAB))

    def step_decode():
        states["decode"] = functional.decode(token(), states["decode"])[1]

    def step_fork():  # what decode did before: fork the sequence, advance the fork, drop the old
        new = functional.fork(states["fork+advance"])
        functional.advance(new, [token()])
        states["fork+advance"] = new

    contenders = {
        "advance": lambda: engine.model.advance(states["advance"], [token()]),
        "advance h4": lambda: functional.advance(states["advance h4"], [token()]),
        "decode": step_decode,
        "fork+advance": step_fork,
        "sampler": lambda: sampler.accept(sampler.sample(logits)),
        "sampler lib": sample_in_library,
    }
    runs: dict[str, list[float]] = {name: [] for name in [*contenders, "generate"]}
    for _ in range(rounds):
        for name, fn in contenders.items():
            runs[name].append(calls_per_second(fn, steps))
        for _ in engine.generate(prompt, max_tokens=steps, seed=int(rng.integers(1 << 30))):
            pass
        runs["generate"].append(engine.stats.decode_tokens_per_second)
    return {name: np.array(rates) for name, rates in runs.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="2x256,12x768", help="comma-separated LAYERSxEMBD")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=64, help="tokens per timed run")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "rwkv_bench_engine")
    p.add_argument("--prepare-only", action="store_true", help="build the models and stop")
    args = p.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    shapes = args.shapes.split(",")
    if args.prepare_only:
        for shape in shapes:
            print(prepare(args.cache, *(int(x) for x in shape.split("x"))))
        return 0
    print(f"RWKV-5 {QUANT}, vocab {VOCAB}, llvm; tok/s: best of {args.rounds} interleaved rounds of "
          f"{args.steps} tokens; ratios: median over the rounds of each round's own ratio")
    print(f"{'shape':>7s} {'advance':>8s} {'generate':>9s} {'gen/adv':>8s} | {'adv h4':>7s} {'decode':>7s} "
          f"{'fork+adv':>9s} {'dec/adv':>8s} {'fork/adv':>9s} | {'sampler ms/tok: numpy':>21s} {'lib':>6s}")
    for shape in shapes:
        r = bench_shape(args.cache, shape, args.rounds, args.steps)

        def ratio(a: str, b: str) -> float:
            return 100 * float(np.median(r[a] / r[b]))
        print(f"{shape:>7s} {r['advance'].max():8.1f} {r['generate'].max():9.1f} {ratio('generate', 'advance'):7.1f}% "
              f"| {r['advance h4'].max():7.1f} {r['decode'].max():7.1f} {r['fork+advance'].max():9.1f} "
              f"{ratio('decode', 'advance h4'):7.1f}% {ratio('fork+advance', 'advance h4'):8.1f}% "
              f"| {1e3 / r['sampler'].max():21.3f} {1e3 / r['sampler lib'].max():6.3f}")
    print("advance / generate: the engine's model (history 1); adv h4 / decode / fork+adv: a model with the "
          "default history (4); fork+adv is what decode cost before it stepped in place")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
