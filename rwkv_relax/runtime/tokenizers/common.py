"""What both tokenizers share: the error type, the end-of-text id, byte input and the UTF-8
stream decoder."""
from __future__ import annotations

import codecs
import importlib.util
from pathlib import Path
from typing import Callable

from ...errors import RWKVRelaxError

EOS_ID = 0  # end-of-text in RWKV vocabularies; the World vocab file has no line for it
WORLD_VOCAB_NAME = "rwkv_vocab_v20230424.txt"
HF_TOKENIZER_NAME = "tokenizer.json"


class TokenizerError(RWKVRelaxError):
    """A vocabulary file that is missing or malformed, or text/ids the vocabulary cannot represent."""


def default_world_vocab() -> Path | None:
    """The World vocab file shipped inside the ``rwkv`` package, or None if it is not installed.

    Only tests and tools use this: the package itself never needs ``rwkv`` at runtime.
    """
    spec = importlib.util.find_spec("rwkv")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / WORLD_VOCAB_NAME
        if path.is_file():
            return path
    return None


class StreamDecoder:
    """Turns ids into text one at a time, holding back an incomplete UTF-8 sequence.

    ``put(id)`` returns the text that is complete so far (often ``""`` while a multi-byte character
    is split over tokens); invalid bytes come out as U+FFFD at once, as in ``decode_text``.
    ``flush()`` ends the stream: a still-incomplete sequence becomes U+FFFD. The concatenation of
    all returned strings equals ``decode_text(all ids)``.
    """

    def __init__(self, token_bytes: Callable[[int], bytes]):
        self._token_bytes = token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def put(self, token_id: int) -> str:
        return self._utf8.decode(self._token_bytes(token_id))

    def flush(self) -> str:
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text


def as_bytes(text: str | bytes) -> bytes:
    if isinstance(text, str):
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise TokenizerError(f"text has an unpaired surrogate at index {e.start}, which UTF-8 "
                                 "cannot encode; pass bytes to encode arbitrary data") from None
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    raise TypeError(f"encode takes str or bytes, not {type(text).__name__}")
