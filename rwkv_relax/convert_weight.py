"""``python -m rwkv_relax.convert_weight <checkpoint> --quantization q4f16_1 -o <dir>``

Streams the checkpoint tensor by tensor through the name table and the quantization into a
tensor cache (``tensor-cache.json`` + ``params_shard_*.bin``). Writes into a temporary directory
beside ``-o`` and renames it at the end: no half-written output.
"""
from __future__ import annotations

import argparse
import sys
import time

from .cli import OneLineParser, add_config_flags, config_overrides, one_line_errors
from .quantization import MODES


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m rwkv_relax.convert_weight", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="BlinkDL .pth, or a Hugging Face folder / file")
    p.add_argument("--quantization", required=True, help=", ".join(MODES))
    p.add_argument("-o", "--output", required=True, help="params directory to write")
    p.add_argument("--keep-embedding-head", action="store_true",
                   help="keep embedding and head in the activation dtype")
    add_config_flags(p)
    return p


@one_line_errors
def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from .model_dir import convert
    t0 = time.perf_counter()
    out = convert(args.checkpoint, args.quantization, args.output, args.keep_embedding_head,
                  config_overrides(args))
    size = sum(f.stat().st_size for f in out.glob("params_shard_*.bin"))
    print(f"wrote {out} ({size / 2**20:.1f} MiB of params) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
