"""Shared CLI plumbing: RWKVRelaxError becomes one ``error:`` line and exit status 2."""
from __future__ import annotations

import functools
import json
import sys


def one_line_errors(main):
    @functools.wraps(main)
    def wrapper(argv=None):
        from .errors import RWKVRelaxError
        try:
            return main(argv)
        except RWKVRelaxError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130
    return wrapper


def parse_overrides(text: str | None) -> dict:
    """``--overrides "prefill_chunk_size=256;max_batch_size=4"`` (MLC style) or a JSON object."""
    from .errors import ConfigError
    if not text:
        return {}
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--overrides is not valid JSON ({err})") from None
    out = {}
    for item in filter(None, (p.strip() for p in text.split(";"))):
        if "=" not in item:
            raise ConfigError(f"--overrides item '{item}' is not key=value")
        key, value = (s.strip() for s in item.split("=", 1))
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def add_config_flags(p) -> None:
    """Flags that end up as config fields (a flag -> a dataclass field, never an env variable)."""
    p.add_argument("--overrides", default=None, help='config overrides, "key=value;key=value"')
    p.add_argument("--fp32-layers", default=None,
                   help="comma-separated layer indices kept entirely in fp32 in an fp16 model, e.g. 0")


def config_overrides(args) -> dict:
    from .errors import ConfigError
    out = parse_overrides(args.overrides)
    if args.fp32_layers:
        try:
            out["fp32_layers"] = [int(x) for x in args.fp32_layers.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--fp32-layers takes comma-separated layer numbers, not '{args.fp32_layers}'") from None
    return out


def run_child_build(kwargs: dict) -> int:
    """Entry of the child process that pipeline.build spawns for driverless CUDA builds."""
    from .errors import RWKVRelaxError
    from .pipeline import build
    from .targets import cuda_runtime_loaded
    if not cuda_runtime_loaded():
        print("error: TVM's CUDA runtime did not load even with the build-only libcuda stub", file=sys.stderr)
        return 2
    try:
        build(**kwargs)
    except RWKVRelaxError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
