"""``python -m rwkv_relax.build --target <llvm|cuda|metal|iphone|android|webgpu|vulkan> [--model ...] [-o lib]``

Without ``--model`` it builds the default RWKV-5 World preset at q4f16_1: compiling needs only the
model's shapes, so no weights are required."""
from __future__ import annotations

import argparse
import sys
import time

from .cli import add_config_flags, config_overrides, one_line_errors

DEFAULT_MODEL = "rwkv5-world-1.5b"
DEFAULT_QUANTIZATION = "q4f16_1"


def parser() -> argparse.ArgumentParser:
    from .config import list_presets
    from .targets import PRESETS
    p = argparse.ArgumentParser(prog="python -m rwkv_relax.build", description=__doc__)
    p.add_argument("--model", default=None,
                   help=f"preset ({', '.join(list_presets())}), checkpoint file/folder, model directory "
                        f"(gen_config) or config JSON; default: {DEFAULT_MODEL} at {DEFAULT_QUANTIZATION}")
    p.add_argument("--target", "--device", dest="target", default="llvm",
                   help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("--arch", default=None, help="target arch override (llvm: -mcpu name)")
    p.add_argument("--quantization", default=None,
                   help="q0f32, q0f16, q4f16_1, q4f32_1, q8f16_1 (default: the model dir's, else q0f32)")
    add_config_flags(p)
    p.add_argument("-o", "--output", default=None, help="library path (default dist/libs/...)")
    return p


@one_line_errors
def main(argv=None) -> int:
    from .pipeline import build
    args = parser().parse_args(argv)
    if args.model is None:  # a library needs only the config: build the default World preset
        args.model = DEFAULT_MODEL
        args.quantization = args.quantization or DEFAULT_QUANTIZATION
    t0 = time.perf_counter()
    out = build(args.model, target=args.target, output=args.output, quantization=args.quantization,
                arch=args.arch, overrides=config_overrides(args))
    size = out.stat().st_size
    print(f"wrote {out} ({size / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
