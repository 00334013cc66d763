"""Time ``x @ W.T`` (W stored (N, K), as RWKV checkpoints do) on llvm: TVM's default pipeline
against rwkv_relax's cpu_pipeline, for decode (M = 1, GEMV) and prefill (M = 512, GEMM).

    python tools/bench_matmul.py [--shapes 768x768,768x65536] [--m 1,512] [--threads N] [--warm] [--all]

Prints time, GB/s of weight reads (M = 1) or GFLOP/s (M = 512) and the speedups. Every output is
checked against numpy (relative 1e-4 of the largest value).

Decode streams every weight from DRAM once per token (570 MB for RWKV-5 0.1B, against a 32 MB
L3), so for M = 1 one timed call applies the layer to ``copies`` distinct weight matrices
(together >= 384 MB) and the time per matrix is reported; ``--warm`` times one matrix called
repeatedly instead (cache-resident for the small shapes: not what the model sees). The
unscheduled baselines above 10 GFLOP (M = 512 on the 65536-row head: ~4 minutes) are skipped
unless ``--all``. Timings are the minimum over repeats: on a shared machine the others mostly
measure the neighbours.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import tvm
from tvm import relax
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op, spec

from rwkv_relax.targets.cpu import cpu_pipeline, host_cpu

SHAPES = [(768, 768), (768, 2688), (2688, 768), (768, 65536)]  # (K, N) of RWKV-5 0.1B
ROWS = [1, 512]
# 12x the L3: at 3x, the L3's thrash-resistant replacement kept enough to flatter M = 1 by ~30%
COLD_BYTES = 384 << 20
RTOL = 1e-4
SLOW_FLOP = 1e10  # the unscheduled baselines run at ~1 GFLOP/s: skip bigger ones unless --all


class Linears(nn.Module):
    """``copies`` independent (N, K) weights, all applied to the same x."""

    def __init__(self, K: int, N: int, copies: int, dtype: str = "float32"):
        self.weights = nn.ParameterList([nn.Parameter((N, K), dtype) for _ in range(copies)])

    def forward(self, x: nn.Tensor):
        return tuple(op.matmul(x, op.permute_dims(w), out_dtype="float32") for w in self.weights)


def pipelines(target) -> dict:
    """old: TVM's default llvm pipeline (a transpose kernel + an unscheduled NN matmul);
    nt: the same after FuseTransposeMatmul (one unscheduled NT_matmul, /tmp/g1.py's "plain");
    new: rwkv_relax's cpu_pipeline (FuseTransposeMatmul + the matmul schedule)."""
    return {"old": relax.get_default_pipeline(target),
            "nt": tvm.transform.Sequential([relax.transform.FuseTransposeMatmul(),
                                            relax.get_default_pipeline(target)]),
            "new": cpu_pipeline(target)}


def time_vm(vm, args, min_seconds: float) -> float:
    """Seconds per call: minimum over 5 repeats, each at least ``min_seconds`` long; a call
    slower than 2 s (unscheduled prefill on the 65536-row head) is timed once."""
    t0 = time.perf_counter()
    vm["forward"](*args)  # warm up (and page in the weights)
    first = time.perf_counter() - t0
    if first > 2.0:
        return first
    f = vm.time_evaluator("forward", tvm.cpu(), number=1, repeat=5, min_repeat_ms=int(min_seconds * 1e3))
    return min(f(*args).results)


def bench(K: int, N: int, M: int, target, min_seconds: float, warm: bool, slow: bool,
          dtype: str = "float32") -> dict:
    size = np.dtype(dtype).itemsize
    copies = 1 if warm or M > 1 else max(1, -(-COLD_BYTES // (N * K * size)))
    rng = np.random.default_rng(K * N + M)
    x = rng.standard_normal((M, K)).astype(dtype)
    ws = [(rng.standard_normal((N, K)) / np.sqrt(K)).astype(dtype) for _ in range(copies)]
    args = [tvm.runtime.tensor(x)] + [tvm.runtime.tensor(w) for w in ws]
    mod, _ = Linears(K, N, copies, dtype).export_tvm({"forward": {"x": spec.Tensor(("m" if M > 1 else 1, K), dtype)}})
    row = {"K": K, "N": N, "M": M, "copies": copies, "size": size}
    for name, pipeline in pipelines(target).items():
        if name != "new" and not slow and 2 * M * N * K > SLOW_FLOP:
            row[name] = None  # unscheduled: minutes
            continue
        with target:
            vm = relax.VirtualMachine(tvm.compile(mod, target, relax_pipeline=pipeline), tvm.cpu())
        for i, (got, w) in enumerate(zip(vm["forward"](*args), ws)):
            ref = x.astype(np.float32) @ w.astype(np.float32).T
            err = np.abs(got.numpy() - ref).max() / np.abs(ref).max()
            if err > RTOL:
                raise AssertionError(f"{name} pipeline, K={K} N={N} M={M} copy {i}: relative error {err:.2e}")
        row[name] = time_vm(vm, args, min_seconds) / copies
    return row


def describe(row: dict, t: float | None) -> str:
    if t is None:
        return f"{'(skipped, --all)':>26}"
    if row["M"] == 1:
        return f"{t * 1e3:9.3f} ms {row['N'] * row['K'] * row['size'] / t / 1e9:6.1f} GB/s"
    return f"{t * 1e3:9.3f} ms {2 * row['M'] * row['N'] * row['K'] / t / 1e9:6.1f} GFLOP/s"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in SHAPES), help="KxN list")
    p.add_argument("--m", default=",".join(map(str, ROWS)), help="row counts (tokens)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="TVM runtime threads (default: every core; TVM alone would take half the "
                        "logical CPUs on x86, i.e. 1 on a 2-vCPU VM without SMT)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="x and W (fp32 sums)")
    p.add_argument("--warm", action="store_true", help="M = 1: reuse one (cache-resident) weight")
    p.add_argument("--min-seconds", type=float, default=0.2, help="minimum length of one repeat")
    p.add_argument("--all", action="store_true",
                   help="also time the unscheduled baselines above 10 GFLOP (M=512 x 65536: ~4 min)")
    args = p.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read once, when the thread pool starts
    target = tvm.target.Target({"kind": "llvm", "mcpu": host_cpu(), "num-cores": os.cpu_count() or 1})
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    print(f"target {target}, {args.threads} threads, M=1 weights {'warm' if args.warm else 'cold (DRAM)'}")
    print(f"{'K':>5} {'N':>6} {'M':>4} | {'old: default pipeline':>26} | {'nt: + FuseTransposeMatmul':>26} | "
          f"{'new: cpu_pipeline':>26} | new/old new/nt")
    for M in (int(m) for m in args.m.split(",")):
        for K, N in shapes:
            row = bench(K, N, M, target, args.min_seconds, args.warm, args.all, args.dtype)
            ratios = " ".join(f"{row[b] / row['new']:5.1f}x" if row[b] else "    - " for b in ("old", "nt"))
            print(f"{K:5d} {N:6d} {M:4d} | {describe(row, row['old'])} | {describe(row, row['nt'])} | "
                  f"{describe(row, row['new'])} | {ratios}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
