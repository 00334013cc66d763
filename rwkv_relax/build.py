"""``python -m rwkv_relax.build --target <llvm|cuda|metal|iphone|android|webgpu|vulkan> [--model ...] [-o lib]``

Without ``--model`` it builds the default RWKV-5 World preset at q4f16_1: compiling needs only the
model's shapes, so no weights are required."""
from __future__ import annotations

import sys
import time

from .cli import OneLineParser, add_config_flags, config_overrides, one_line_errors
from .config import list_presets
from .quantization import MODES
from .targets import PRESETS

DEFAULT_MODEL = "rwkv5-world-1.5b"
DEFAULT_QUANTIZATION = "q4f16_1"


def parser() -> OneLineParser:
    p = OneLineParser(prog="python -m rwkv_relax.build", description=__doc__)
    p.add_argument("--model", default=None,
                   help=f"preset ({', '.join(list_presets())}), checkpoint file/folder, model directory "
                        f"(gen_config) or config JSON; default: {DEFAULT_MODEL} at {DEFAULT_QUANTIZATION}")
    p.add_argument("--target", "--device", dest="target", default="llvm",
                   help=f"one of: {', '.join(PRESETS)} (default llvm)")
    p.add_argument("--chip", default=None,
                   help="the target's chip: " + "; ".join(f"{p.name}: {p.chip_help}" for p in PRESETS.values()
                                                          if p.chip_help))
    p.add_argument("--arch", dest="chip", help="old name of --chip")
    p.add_argument("--quantization", default=None,
                   help=f"{', '.join(MODES)} (default: the model dir's, else q0f32)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="cuda only: capture decode's kernels in CUDA graphs, replayed each step (fewer launches)")
    p.add_argument("--cpu-int8-activations", action="store_true",
                   help="llvm, quantized modes: decode GEMVs on int8 activations quantized per group (as ggml's "
                        "Q8_0 dots; AVX2/AVX512-VNNI), ~1.3x faster 4-bit GEMVs at a small quality cost "
                        "(tools/quant_quality.py); recorded in the library's _metadata")
    add_config_flags(p)
    p.add_argument("-o", "--output", default=None, help="library path (default dist/libs/...)")
    return p


@one_line_errors
def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from .pipeline import build
    if args.model is None:  # a library needs only the config: build the default World preset
        args.model = DEFAULT_MODEL
        args.quantization = args.quantization or DEFAULT_QUANTIZATION
    t0 = time.perf_counter()
    out = build(args.model, target=args.target, output=args.output, quantization=args.quantization,
                chip=args.chip, overrides=config_overrides(args), cuda_graph=args.cuda_graph,
                cpu_int8_activations=args.cpu_int8_activations)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
