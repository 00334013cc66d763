"""The cases of ``tools/gpu_check.py``: (a) parity of a library against a reference, (b) and (c)
speed of a library on random weights made on its device. Shared by its cuda and cpu runs: only
what is compared and where it runs differ (``gpu_check.Plan``)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from bench import decode_weight_bytes, timed  # tools/ is on sys.path: these are scripts, not a package

DECODE_STEPS = 16


def rel(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


class NumpyReference:
    """The version's float64 numpy model on a loaded library's own (de-quantized) parameters,
    driven like a CompiledModel."""

    def __init__(self, model):
        from rwkv_relax.debug import library_params
        from rwkv_relax.quantization import get_mode
        from rwkv_relax.reference import dequantized_params
        from rwkv_relax.registry import get_spec
        md = model.metadata
        mode = get_mode(md["quantization"])
        params = dequantized_params(library_params(model), mode.weight_bits, mode.group_size)
        self.ref = get_spec(md["model_type"]).reference(md["model_config"], params)

    def prefill(self, tokens, state=None):
        logits, state, _ = self.ref.forward(np.asarray(tokens, dtype=np.int64), state)
        return logits, state

    def decode(self, token, state):
        return self.prefill([int(token)], state)

    def batch_decode(self, tokens, states):
        outs = [self.decode(t, s) for t, s in zip(tokens, states)]
        return np.stack([o[0] for o in outs]), [o[1] for o in outs]


def parity_case(test, ref, vocab: int, rng) -> dict:
    """(a): a prefill, DECODE_STEPS greedy steps (the reference's choice fed to both), and one
    batch_decode of 4 sequences of different lengths."""
    prompt = rng.integers(0, vocab, 24)
    (ours, s_ours), (theirs, s_ref) = test.prefill(prompt), ref.prefill(prompt)
    out = {"prefill": rel(ours, theirs), "decode": 0.0}
    for _ in range(DECODE_STEPS):
        token = int(theirs.argmax())
        (ours, s_ours), (theirs, s_ref) = test.decode(token, s_ours), ref.decode(token, s_ref)
        out["decode"] = float(np.max([out["decode"], rel(ours, theirs)]))  # np.max: a NaN wins
    prompts = [rng.integers(0, vocab, n) for n in (3, 9, 1, 14)]
    tokens = rng.integers(0, vocab, len(prompts))
    ours, _ = test.batch_decode(tokens, [test.prefill(p)[1] for p in prompts])
    theirs, _ = ref.batch_decode(tokens, [ref.prefill(p)[1] for p in prompts])
    out["batch_decode"] = float(np.max([rel(o, t) for o, t in zip(ours, theirs)]))
    return out


def copy_bandwidth(device, nbytes: int, repeats: int = 5) -> float:
    """Device-to-device copy bytes/s of two ``nbytes`` buffers, read + write counted (best of ``repeats``)."""
    import tvm
    a, b = (tvm.runtime.empty((nbytes // 4,), "float32", device) for _ in range(2))
    a.copyto(b)  # first touch
    device.sync()
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        a.copyto(b)
        device.sync()
        best = max(best, 2 * nbytes / (time.perf_counter() - t0))
    return best


def decode_probe(model, prompt: list[int], tokens: list[int]) -> np.ndarray:
    """Logits of decode steps after a prefill, then of a new sequence started after them (so a
    CUDA-graph library that overwrote the initial state it keeps is caught)."""
    state = model.new_state()
    model.advance(state, prompt)
    rows = [model.advance(state, [t]) for t in tokens]
    fresh = model.new_state()
    rows += [model.advance(fresh, [t]) for t in tokens[:2]]
    return np.stack(rows)


def decode_seconds(model, prompt: list[int], rng) -> float:
    """Seconds per decode step (best of 3 x DECODE_STEPS) after a warm-up step, which captures
    the CUDA graphs of a --cuda-graph library."""
    state = model.new_state()
    model.advance(state, prompt[:8])
    model.advance(state, [1])
    return timed(lambda: model.advance(state, [int(rng.integers(model.vocab_size))]), DECODE_STEPS)


def measure(model, plan, rng) -> dict:
    """(b) and (c) on a loaded model: decode, prefill and in-place batch decode rates."""
    md, vocab = model.metadata, model.vocab_size
    prompt = rng.integers(0, vocab, plan.prefill_tokens).tolist()
    probe_tokens = rng.integers(0, vocab, 6).tolist()
    probe = decode_probe(model, prompt[:8], probe_tokens)
    decode_s = decode_seconds(model, prompt, rng)
    prefill_logits = model.advance(model.new_state(), prompt)
    prefill_s = timed(lambda: model.advance(model.new_state(), prompt), 1)
    batch = []
    for n in plan.batch_sizes:
        states = [model.new_state() for _ in range(n)]

        def step(states=states, n=n):
            return model.advance_batch(states, [[int(t)] for t in rng.integers(0, vocab, n)])
        step()  # warm
        step_s = timed(step, 4)
        batch.append({"sequences": n, "tok_s": n / step_s, "step_ms": 1e3 * step_s})
    cfg = md["model_config"]
    return {"model": md["model_name"], "mode": md["quantization"], "model_type": md["model_type"],
            "shape": {k: cfg[k] for k in ("n_layer", "n_embd", "vocab_size")},
            "weight_bytes_per_step": decode_weight_bytes({p["name"]: (p["shape"], p["dtype"]) for p in md["params"]}),
            "decode_tok_s": 1 / decode_s, "prefill_tokens": len(prompt), "prefill_tok_s": len(prompt) / prefill_s,
            "batch": batch, "finite": bool(np.isfinite(probe).all() and np.isfinite(prefill_logits).all()),
            "_probe": (prompt, probe_tokens, probe)}


def measure_graph(graph, probe: tuple, rng) -> dict:
    """A --cuda-graph library on the same random weights: its decode logits against the plain
    library's, and its decode rate."""
    prompt, tokens, logits = probe
    return {"graph_max_rel_diff": rel(decode_probe(graph, prompt[:8], tokens), logits),
            "graph_decode_tok_s": 1 / decode_seconds(graph, prompt, rng)}


def speed_case(lib: Path, mode: str, plan, tvm_target, rng, graph_lib: Path | None) -> dict:
    """(b) and (c) for one library, on random weights made on the device (one model in memory at
    a time: a 7B at q0f16 takes 14 GB)."""
    from rwkv_relax import load_model
    from rwkv_relax.testing.device_params import random_params

    def make(params, device):
        return random_params(params, mode, device, tvm_target)

    slots = sum(plan.batch_sizes) + 8  # a batch's states may outlive it until the next one is made
    out = measure(load_model(lib, make, device=plan.device, max_sequences=slots), plan, rng)
    probe = out.pop("_probe")
    if graph_lib is not None:
        out.update(measure_graph(load_model(graph_lib, make, device=plan.device, max_sequences=8), probe, rng))
    return out
