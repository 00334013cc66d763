"""``python -m rwkv_relax.generate --model <dir> --prompt "..." [--max-tokens N] [--seed N]``

Streams one continuation of the prompt (no chat template) to stdout. Without ``--model-lib`` the
library is built for ``--device`` on first use and cached. The model directory's sampling
defaults apply unless a flag overrides them."""
from __future__ import annotations

import argparse
import contextlib
import sys

from .cli import one_line_errors

# flag type for each sampling field (engine.SAMPLING_FIELDS)
SAMPLING_FLAGS = {"temperature": float, "top_p": float, "top_k": int, "presence_penalty": float,
                  "frequency_penalty": float, "penalty_decay": float}


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one ``error:`` line and exit status 2, like every other error."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def add_engine_flags(p: argparse.ArgumentParser) -> None:
    from .engine import DEFAULT_MAX_TOKENS, DEVICE_TARGETS
    p.add_argument("--model", required=True, help="model directory (gen_config + convert_weight output)")
    p.add_argument("--model-lib", default=None,
                   help="compiled library for the directory (default: built for --device once, then cached)")
    p.add_argument("--device", default="cpu", help=f"one of {', '.join(DEVICE_TARGETS)}")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (same seed, same text)")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, help="most tokens per reply")
    for field, kind in SAMPLING_FLAGS.items():
        p.add_argument(f"--{field.replace('_', '-')}", type=kind, default=None,
                       help="default: the model directory's")


def sampling_overrides(args) -> dict:
    return {f: getattr(args, f) for f in SAMPLING_FLAGS if getattr(args, f) is not None}


def printable_stdout() -> None:
    """Model text may hold characters a non-UTF-8 terminal cannot show: print them as '?'."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")


@contextlib.contextmanager
def unexpected_errors_in_one_line():
    """Errors from below (TVM, the OS) also become one ``error:`` line, naming their type."""
    from .errors import RWKVRelaxError
    try:
        yield
    except RWKVRelaxError:
        raise
    except Exception as err:  # pylint: disable=broad-except
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise RWKVRelaxError(f"unexpected {type(err).__name__}: {first}") from None


def open_engine(args, conv_template: str | None = None):
    """The engine the flags name; says so on stderr when the library must be built first."""
    from .engine import Engine, cached_library_path
    if not args.model_lib:
        lib = cached_library_path(args.model, args.device)
        if not lib.is_file():
            print(f"building the model library for {args.device} (once; cached as {lib})",
                  file=sys.stderr, flush=True)
    return Engine(args.model, args.model_lib, args.device, conv_template=conv_template)


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
    from .engine import EngineError
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
