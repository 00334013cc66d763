"""``python -m rwkv_relax.serve --model <dir> --model-lib <lib> [--device cpu] [--host 127.0.0.1] [--port 8000]``

An OpenAI-compatible HTTP server (``/v1/completions``, ``/v1/chat/completions``, ``/v1/models``,
``/health``, ``/metrics``) with continuous batching: one engine loop decodes every running request
in one forward per step and prefills new prompts in chunks between steps. Finished conversations'
states are cached (``--state-cache-mb``), so a chat's next turn prefills only its new text.
SIGTERM (or Ctrl-C) finishes the running requests, then exits."""
from __future__ import annotations

import argparse
import signal
import sys

from ..cli import OneLineParser, log, one_line_errors, unexpected_errors_in_one_line

DEFAULTS = dict(max_sequences=32, max_queue=64, max_prompt_tokens=8192, state_cache_mb=256)


def parser() -> OneLineParser:
    p = OneLineParser(prog="python -m rwkv_relax.serve", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model directory (gen_config + convert_weight output)")
    p.add_argument("--model-lib", default=None,
                   help="compiled library for the directory (python -m rwkv_relax.build --model <dir> -o <lib>)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, metal, vulkan or opencl (default cpu)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--served-model-name", default=None,
                   help="the model name requests must give (default: the model directory's name)")
    p.add_argument("--conv-template", default=None, help="chat template (default: the model directory's)")
    p.add_argument("--time-state", default=None, metavar="FILE",
                   help="state-tuning file (RWKV-5/6 blocks.<i>.att.time_state) every sequence starts from")
    p.add_argument("--max-sequences", type=int, default=DEFAULTS["max_sequences"],
                   help="requests prefilling or decoding at once (default %(default)s)")
    p.add_argument("--max-queue", type=int, default=DEFAULTS["max_queue"],
                   help="requests waiting for a slot; beyond it a 429 with Retry-After (default %(default)s)")
    p.add_argument("--max-prompt-tokens", type=int, default=DEFAULTS["max_prompt_tokens"],
                   help="longest prompt taken, in tokens; longer ones get a 400 (default %(default)s)")
    p.add_argument("--prefill-chunk", type=int, default=None,
                   help="prompt tokens prefilled per step, all requests together (default and most: the "
                        "library's prefill_chunk_size)")
    p.add_argument("--state-cache-mb", type=float, default=DEFAULTS["state_cache_mb"],
                   help="memory for cached conversation states, MiB; 0 turns the cache off (default %(default)s)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default info)")
    return p


def build_app(args):
    """The FastAPI app the flags describe, with its engine loaded (the loop starts with the app)."""
    from ..runtime.engine import Engine
    from ..runtime.model_dir import EngineError
    from .app import create_app
    from .metrics import Metrics
    from .scheduler import Scheduler, runtime_slots
    from .state_cache import StateCache
    for flag in ("max_sequences", "max_queue", "max_prompt_tokens"):
        if getattr(args, flag) < 1:
            raise EngineError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.state_cache_mb < 0 or (args.prefill_chunk is not None and args.prefill_chunk < 1):
        raise EngineError("--state-cache-mb must be >= 0 and --prefill-chunk >= 1")
    if args.model_lib is None:
        raise EngineError(f"no model library given; build one with python -m rwkv_relax.build --model {args.model} "
                          "-o <lib> and pass --model-lib <lib>")
    engine = Engine(args.model, args.model_lib, args.device, conv_template=args.conv_template,
                    max_sequences=runtime_slots(args.max_sequences), time_state=args.time_state)
    scheduler = Scheduler(engine, Metrics(), max_sequences=args.max_sequences, max_queue=args.max_queue,
                          prefill_chunk=min(args.prefill_chunk or engine.model.chunk, engine.model.chunk),
                          cache=StateCache(int(args.state_cache_mb * 2**20)))
    name = args.served_model_name or engine.model_dir.resolve().name
    return create_app(scheduler, name, args.max_prompt_tokens), name


@one_line_errors
def main(argv=None) -> int:
    args = parser().parse_args(argv)
    with unexpected_errors_in_one_line():
        app, name = build_app(args)
    import uvicorn
    log.info("serving %s on http://%s:%d/v1", name, args.host, args.port)
    # uvicorn drains on SIGTERM / Ctrl-C, then raises the signal again under the handlers it found:
    # make those no-ops, so that a drained server exits 0
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: None)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
