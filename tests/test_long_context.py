"""A 100K-token prompt through prefill: resident memory and the state's size do not grow with the
context, and the cost per token stays flat. Measured in a fresh process by
tools/bench_long_context.py (VmRSS / VmHWM from /proc/self/status) on a tiny model."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rwkv_relax import load_model

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_long_context.py"
SHAPES = {"rwkv5": dict(n_layer=2, n_embd=64, vocab_size=1024, head_size=32, seed=5),
          "rwkv6": dict(n_layer=2, n_embd=64, vocab_size=1024, head_size=32, dim_mix_lora=8, dim_decay_lora=16, seed=5),
          "rwkv7": dict(n_layer=2, n_embd=64, vocab_size=1024, head_size=32, dim_decay_lora=16, dim_a_lora=16,
                        dim_v_lora=8, dim_gate_lora=24, seed=5)}
LENGTHS = (10, 1_000, 10_000, 40_000, 70_000, 100_000)
MAX_RSS_GROWTH = 0.05  # relative, 10K -> 100K tokens
# absolute, 10K -> 100K: one chunk's (512 x 64 fp32) activations leaked per chunk would be 22 MiB
MAX_RSS_GROWTH_BYTES = 16 * 2**20


@pytest.fixture(scope="module", params=list(SHAPES))
def long_run(factory, request):
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs /proc/self/status for the resident-memory figures")
    ckpt = factory.checkpoint(request.param, "long", **SHAPES[request.param])
    lib = factory.library(ckpt)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(TOOL), "--model", str(ckpt), "--lib", str(lib), "--json",
                           "--lengths", ",".join(map(str, LENGTHS))], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    records = {r["tokens"]: r for r in report["records"]}
    print(f"\n100K-token prefill: {sum(r['segment_seconds'] for r in report['records']):.2f} s "
          f"({records[100_000]['us_per_token']:.1f} us/token for 70K -> 100K), subprocess wall {wall:.1f} s; "
          f"RSS {records[10_000]['rss'] / 2**20:.1f} -> {records[100_000]['rss'] / 2**20:.1f} MiB")
    return ckpt, lib, report, records


def test_resident_memory_flat_from_10k_to_100k_tokens(long_run):
    _, _, _, records = long_run
    short, long = records[10_000], records[100_000]
    for key in ("rss", "hwm"):  # now and peak: no transient allocation that grows with the prompt
        assert long[key] <= (1 + MAX_RSS_GROWTH) * short[key], (key, short[key], long[key])
    assert long["rss"] - short["rss"] < MAX_RSS_GROWTH_BYTES


def test_state_size_independent_of_length(long_run):
    ckpt, lib, _, records = long_run
    assert records[100_000]["state_length"] == 100_000
    assert records[10]["state"] == records[100_000]["state"]
    assert records[10]["state_bytes"] == records[100_000]["state_bytes"]
    spec = load_model(lib, ckpt).metadata["state"]
    n_layer = load_model(lib, ckpt).n_layer
    want = {f"{layer}.{s['name']}": [s["shape"], s["dtype"]] for layer in range(n_layer) for s in spec}
    assert {k: v[:2] for k, v in records[100_000]["state"].items()} == want
    assert all(r["logits_finite"] and r["state_finite"] for r in records.values())


def test_prefill_cost_per_token_flat(long_run):
    _, _, report, records = long_run
    assert report["prefill_chunk_size"] == 512  # the runtime chunked the 100K tokens
    # per token, the last 60K tokens cost about what the 9K before 10K did: a cost that grows with
    # the context would be >= 10x in both 30K segments (40K-70K, 70K-100K). The better of the two
    # is compared, and the bound sits just below that, for timing noise on a shared machine (the
    # other test worker has made one 90K segment 6x slower, and both late segments 4.2x)
    late = min(records[n]["us_per_token"] for n in (70_000, 100_000))
    assert late < 8 * records[10_000]["us_per_token"], (late, records[10_000]["us_per_token"])
    assert sum(r["segment_seconds"] for r in report["records"]) < 60
