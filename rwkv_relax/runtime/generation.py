"""What one generation call shares between the engine and chat sessions: its statistics, the
exact-bytes text stream, the engine-time clock and the request checks."""
from __future__ import annotations

import codecs
import dataclasses
import time
from typing import Callable

from .model_dir import EngineError

SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "presence_penalty", "frequency_penalty",
                   "penalty_decay")
DEFAULT_MAX_TOKENS = 256


@dataclasses.dataclass
class GenerationStats:
    """What the last generate / chat call did. Times are the engine's own work: time the caller
    spends between two pieces of the stream is not counted."""

    prefill_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_tokens: int = 0  # tokens sampled (the last one is not fed back when generation ends)
    decode_seconds: float = 0.0
    finish_reason: str = ""  # "stop" (a stop string), "eos" (end-of-text token), "length"

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prefill_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def __str__(self) -> str:
        return (f"prefill: {self.prefill_tokens} tok, {self.prefill_tokens_per_second:.1f} tok/s; "
                f"decode: {self.decode_tokens} tok, {self.decode_tokens_per_second:.1f} tok/s")


class ExactStream:
    """:class:`~.tokenizers.StreamDecoder` that keeps invalid UTF-8 as surrogate escapes
    (``errors="surrogateescape"``) instead of U+FFFD, so the text encodes back to the exact bytes
    the tokens carry."""

    def __init__(self, token_bytes: Callable[[int], bytes]):
        self._token_bytes = token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")

    def put(self, token_id: int) -> str:
        return self._utf8.decode(self._token_bytes(token_id))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class Clock:
    """Adds up the engine's own time in a generator, leaving out the time spent outside it."""

    def __init__(self):
        self.total, self._t0 = 0.0, time.perf_counter()

    def pause(self) -> None:
        self.total += time.perf_counter() - self._t0

    def resume(self) -> None:
        self._t0 = time.perf_counter()


def shown_text(raw: str) -> str:
    """Generated text for people: surrogate-escaped bytes (invalid UTF-8) become U+FFFD."""
    return raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def check_max_tokens(max_tokens) -> None:
    if not isinstance(max_tokens, int) or max_tokens < 0:
        raise EngineError(f"max_tokens must be a whole number >= 0, got {max_tokens!r}")
