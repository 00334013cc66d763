"""N concurrent streaming clients against a live ``python -m rwkv_relax.serve`` on 127.0.0.1.

    python tools/bench_serve.py                               # random 12 x 768 RWKV-5 World, q4f16_1
    python tools/bench_serve.py --model DIR --model-lib LIB --clients 1 4 16 64 --max-tokens 64

For each N, N clients start together, each streaming one completion (distinct prompts, seeded
sampling with the model directory's defaults), and every token's arrival time is recorded.
Reported per N: aggregate decode tok/s (tokens that arrived while all N streams were decoding,
over that window), per-stream tok/s, time to first token and inter-token latency (p50 / p99),
and the aggregate's ratio to N = 1. For reference, measured first in this process (the server not
yet started): ``CompiledModel.advance`` one token at a time, the single-sequence decode kernel
that the server does not use (its steps go through the batch kernels, see serve/scheduler.py),
and the aggregate's ratio to it. Without --model, a random checkpoint is made and built once
into --cache (tools/bench_engine.py's ``prepare``). A benchmark, not a test: figures vary run to
run, more so on a shared machine.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def start_server(model_dir: Path, lib: Path, port: int, max_sequences: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "rwkv_relax.serve", "--model", str(model_dir), "--model-lib",
                             str(lib), "--port", str(port), "--max-sequences", str(max_sequences),
                             "--max-queue", str(max_sequences), "--state-cache-mb", "0", "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"the server did not start; see {log}")


def stream_one(port: int, model: str, prompt: str, max_tokens: int, seed: int, start: threading.Barrier) -> dict:
    """One streaming completion: its send time and every token's arrival time."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "seed": seed, "stream": True})
    start.wait()
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()[:300]
    times = []
    for line in resp:  # chunked framing is undone by HTTPResponse's iteration over lines
        if line.startswith(b"data: {"):
            event = json.loads(line[6:])
            if event["choices"] and event["choices"][0]["text"]:
                times.append(time.perf_counter())
        elif line.startswith(b"data: [DONE]"):
            break
    conn.close()
    return {"sent": t0, "times": times}


def run_n(port: int, model: str, n: int, max_tokens: int) -> dict:
    start = threading.Barrier(n)
    out: list[dict | None] = [None] * n

    def client(i):
        prompt = f"Request {i}: the weather in city number {i} today is"
        out[i] = stream_one(port, model, prompt, max_tokens, seed=i, start=start)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = max(r["times"][0] for r in out)  # every stream is decoding from here ...
    last = min(r["times"][-1] for r in out)  # ... to here
    in_window = sum(sum(first < t <= last for t in r["times"]) for r in out)
    aggregate = in_window / (last - first) if last > first else float("nan")
    ttft = [r["times"][0] - r["sent"] for r in out]
    itl = np.concatenate([np.diff(r["times"]) for r in out])
    per_stream = [(len(r["times"]) - 1) / (r["times"][-1] - r["times"][0]) for r in out]
    return {"n": n, "aggregate": aggregate, "per_stream": float(np.median(per_stream)),
            "ttft": np.percentile(ttft, [50, 99]) * 1e3, "itl": np.percentile(itl, [50, 99]) * 1e3,
            "tokens": sum(len(r["times"]) for r in out)}


def single_sequence_rate(model_dir: Path, lib: Path, steps: int = 32) -> float:
    """tok/s of ``advance(state, [token])``: one sequence, the ``decode`` kernel."""
    from rwkv_relax.runtime.model import CompiledModel
    model = CompiledModel(lib, model_dir, max_sequences=2, max_history=1)
    state = model.new_state()
    model.advance(state, [1, 2, 3])
    for _ in range(4):
        model.advance(state, [5])
    t0 = time.perf_counter()
    for i in range(steps):
        model.advance(state, [10 + i])
    return steps / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="model directory (default: a random 12 x 768)")
    p.add_argument("--model-lib", type=Path, default=None, help="its library (with --model)")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "rwkv_bench_serve",
                   help="where the random model is built once")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per stream")
    args = p.parse_args(argv)
    if args.model is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_engine import prepare
        args.cache.mkdir(parents=True, exist_ok=True)
        args.model, args.model_lib = prepare(args.cache, 12, 768)
    single = single_sequence_rate(args.model, args.model_lib)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = Path(tempfile.gettempdir()) / "bench_serve_server.log"
    proc = start_server(args.model, args.model_lib, port, max(args.clients), log)
    try:
        run_n(port, args.model.name, 2, 4)  # warm-up (first calls of each kernel, allocator pools)
        rows = [run_n(port, args.model.name, n, args.max_tokens) for n in args.clients]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    base = rows[0]["aggregate"]
    print(f"model {args.model.name}, {args.max_tokens} tokens per stream, {os.cpu_count()} CPUs; "
          f"single-sequence decode kernel (in process): {single:.1f} tok/s")
    print(f"{'N':>4} {'aggregate tok/s':>16} {'x N=' + str(rows[0]['n']):>7} {'x decode':>9} "
          f"{'per-stream tok/s':>17} {'TTFT p50/p99 ms':>17} {'ITL p50/p99 ms':>16}")
    for r in rows:
        print(f"{r['n']:>4} {r['aggregate']:>16.1f} {r['aggregate'] / base:>7.2f} {r['aggregate'] / single:>9.2f} "
              f"{r['per_stream']:>17.1f} {r['ttft'][0]:>8.0f}/{r['ttft'][1]:<8.0f} "
              f"{r['itl'][0]:>7.1f}/{r['itl'][1]:<8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
