"""Build time per target for a preset (default: RWKV-5 World 1.5B at q4f16_1).

    python tools/bench_targets.py [--model rwkv5-world-1.5b] [--quantization q4f16_1] [--targets ...]

Benchmark, not test: the target is < 60 s per target on a 2-core machine. Vulkan stops after
lowering (the pinned TVM wheel has no SPIR-V codegen): its time is the time to that error.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    from rwkv_relax import RWKVRelaxError
    from rwkv_relax.pipeline import build
    from rwkv_relax.targets import PRESETS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="rwkv5-world-1.5b")
    p.add_argument("--quantization", default="q4f16_1")
    p.add_argument("--targets", default=",".join(PRESETS))
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rwkv_targets_"))
    print(f"{args.model} at {args.quantization}")
    print(f"{'target':8s} {'seconds':>8s}  result")
    for name in args.targets.split(","):
        t0 = time.perf_counter()
        try:
            out = build(args.model, target=name, quantization=args.quantization,
                        output=work / f"lib-{name}{PRESETS[name].extension}")
            result = f"{out.name} ({out.stat().st_size / 2**20:.1f} MiB)"
        except RWKVRelaxError as err:
            result = f"error: {str(err)[:90]}"
        print(f"{name:8s} {time.perf_counter() - t0:8.1f}  {result}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
