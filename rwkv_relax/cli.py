"""What every CLI shares (a leaf module: no TVM, so ``--help`` is instant): one parser style whose
usage errors are one ``error:`` line, RWKVRelaxError as one line and exit status 2, config flags,
and the one logging setup (messages on stderr through the ``rwkv_relax`` logger)."""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import sys

from .errors import ConfigError, RWKVRelaxError

log = logging.getLogger("rwkv_relax")


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one ``error:`` line and exit status 2, like every other error."""

    def error(self, message):
        self.exit(2, f"error: {one_line(message)} (see {self.prog} --help)\n")


# characters str.splitlines() breaks at: user text echoed in a message must not split its line
_LINE_BREAKS = {c: ascii(chr(c))[1:-1] for c in (0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029)}


def one_line(message: str) -> str:
    """``message`` with its line-breaking characters escaped (``\n`` -> ``\\n``)."""
    return str(message).translate(_LINE_BREAKS)


def one_line_errors(main):
    """``main(argv) -> int`` with RWKVRelaxError as ``error: ...`` on stderr and exit status 2."""
    @functools.wraps(main)
    def wrapper(argv=None):
        setup_logging()
        try:
            return main(argv)
        except RWKVRelaxError as err:
            print(f"error: {one_line(err)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130
    return wrapper


class _StderrHandler(logging.Handler):
    """Plain lines on whatever ``sys.stderr`` is when a message comes (tests swap it)."""

    def emit(self, record):
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # pylint: disable=broad-except
            self.handleError(record)


def setup_logging(level: int = logging.INFO) -> None:
    """Progress messages of long operations go to stderr as plain lines (once per process)."""
    if not log.handlers:
        log.addHandler(_StderrHandler())
        log.setLevel(level)
        log.propagate = False


@contextlib.contextmanager
def unexpected_errors_in_one_line():
    """Errors from below (TVM, the OS) also become one ``error:`` line, naming their type."""
    try:
        yield
    except RWKVRelaxError:
        raise
    except Exception as err:  # pylint: disable=broad-except
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise RWKVRelaxError(f"unexpected {type(err).__name__}: {first}") from None


def printable_stdout() -> None:
    """Model text may hold characters a non-UTF-8 terminal cannot show: print them as '?'."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")


def parse_overrides(text: str | None) -> dict:
    """``--overrides "prefill_chunk_size=256;max_batch_size=4"`` (MLC style) or a JSON object."""
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


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """Flags that end up as config fields (a flag -> a dataclass field, never an env variable)."""
    p.add_argument("--overrides", default=None, help='config overrides, "key=value;key=value"')
    p.add_argument("--fp32-layers", default=None,
                   help="comma-separated layer indices kept entirely in fp32 in an fp16 model, e.g. 0")


def config_overrides(args) -> dict:
    out = parse_overrides(args.overrides)
    if args.fp32_layers:
        try:
            out["fp32_layers"] = [int(x) for x in args.fp32_layers.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--fp32-layers takes comma-separated layer numbers, not '{args.fp32_layers}'") from None
    return out
