"""``python -m rwkv_relax.generate --model <dir> --prompt "..." [--max-tokens N] [--seed N]``

Streams one continuation of the prompt (no chat template) to stdout. Without ``--model-lib`` the
library is built for ``--device`` on first use and cached. The model directory's sampling
defaults apply unless a flag overrides them."""
from __future__ import annotations

import argparse
import sys

from .cli import OneLineParser, one_line_errors, printable_stdout, unexpected_errors_in_one_line
from .runtime.generation import DEFAULT_MAX_TOKENS
from .targets import DEVICE_TARGETS

# flag type for each sampling field (runtime.generation.SAMPLING_FIELDS)
SAMPLING_FLAGS = {"temperature": float, "top_p": float, "top_k": int, "presence_penalty": float,
                  "frequency_penalty": float, "penalty_decay": float}


def add_engine_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (gen_config + convert_weight output)")
    p.add_argument("--model-lib", default=None,
                   help="compiled library for the directory (default: built for --device once, then cached)")
    p.add_argument("--device", default="cpu", help=f"one of {', '.join(DEVICE_TARGETS)}")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (same seed, same text)")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, help="most tokens per reply")
    p.add_argument("--time-state", default=None, metavar="FILE",
                   help="state-tuning file (RWKV-5/6 blocks.<i>.att.time_state) to start from")
    for field, kind in SAMPLING_FLAGS.items():
        p.add_argument(f"--{field.replace('_', '-')}", type=kind, default=None,
                       help="default: the model directory's")


def sampling_overrides(args) -> dict:
    return {f: getattr(args, f) for f in SAMPLING_FLAGS if getattr(args, f) is not None}


def open_engine(args, conv_template: str | None = None):
    """The engine the flags name (its first-use library build logs its progress on stderr)."""
    from .jit import Engine
    return Engine(args.model, args.model_lib, args.device, conv_template=conv_template, time_state=args.time_state)


@one_line_errors
def main(argv=None) -> int:
    p = OneLineParser(prog="python -m rwkv_relax.generate", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_flags(p)
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--stats", action="store_true", help="print prefill / decode speed to stderr")
    args = p.parse_args(argv)
    printable_stdout()
    from .runtime.model_dir import EngineError
    if not args.prompt:
        raise EngineError("empty prompt; give some text to continue")
    with unexpected_errors_in_one_line():
        engine = open_engine(args)
        for piece in engine.generate(args.prompt, args.max_tokens, seed=args.seed, stop=args.stop,
                                     **sampling_overrides(args)):
            sys.stdout.write(piece)
            sys.stdout.flush()
    sys.stdout.write("\n")
    if args.stats:
        print(engine.stats, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
