"""Hugging Face ``tokenizer.json`` files (GPT-NeoX 20B for RWKV-4 Pile / Raven) behind the World
tokenizer's interface."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .common import EOS_ID, StreamDecoder, TokenizerError, as_bytes


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted: char -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def _uses_byte_level_decoder(decoder: dict | None) -> bool:
    if not decoder:
        return False
    if decoder.get("type") == "Sequence":
        return any(_uses_byte_level_decoder(d) for d in decoder.get("decoders", []))
    return decoder.get("type") == "ByteLevel"


class _TextDiffStream:
    """Streaming for decoders that are not byte-level (WordPiece, Metaspace, ...): decode a short
    window of recent ids and emit what grew, so word joining follows the tokenizer's decoder."""

    def __init__(self, decode_text: Callable[[list[int]], str]):
        self._decode_text = decode_text
        self._ids: list[int] = []
        self._prefix = 0  # ids[_prefix:_read] were emitted already and give context
        self._read = 0

    def put(self, token_id: int) -> str:
        self._ids.append(token_id)
        before = self._decode_text(self._ids[self._prefix:self._read])
        after = self._decode_text(self._ids[self._prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before):]

    def flush(self) -> str:
        before = self._decode_text(self._ids[self._prefix:self._read])
        after = self._decode_text(self._ids[self._prefix:])
        self._ids, self._prefix, self._read = [], 0, 0
        return after[len(before):]


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` (GPT-NeoX 20B for RWKV-4 Pile / Raven) behind the same
    interface as :class:`WorldTokenizer`.

    ``encode`` adds no special tokens. ``decode`` returns bytes: for byte-level BPE the exact bytes
    of each token (so streams can split UTF-8 characters), otherwise the decoder's text as UTF-8.
    Special added tokens (e.g. ``<|endoftext|>``) decode to nothing.
    """

    def __init__(self, tokenizer_json_path: str | Path):
        self.path = Path(tokenizer_json_path)
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise TokenizerError(f"{self.path}: reading tokenizer.json needs the 'tokenizers' "
                                 "package; pip install tokenizers") from None
        if not self.path.is_file():
            raise TokenizerError(f"{self.path}: tokenizer file not found")
        try:
            spec = json.loads(self.path.read_text(encoding="utf-8"))
            self._tok = Tokenizer.from_str(json.dumps(spec))
        except Exception as e:  # json, UnicodeDecodeError, tokenizers' own exception type
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TokenizerError(f"{self.path}: not a valid tokenizer.json ({first})") from None
        self._special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
        self._byte_level = _uses_byte_level_decoder(spec.get("decoder"))
        self._alphabet = _byte_level_alphabet()
        eos = self._tok.token_to_id("<|endoftext|>")
        self.eos_id = EOS_ID if eos is None else eos

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str | bytes) -> list[int]:
        if not isinstance(text, str):
            try:
                text = as_bytes(text).decode("utf-8")
            except UnicodeDecodeError as e:
                raise TokenizerError(f"{self.path}: Hugging Face tokenizers take text; these bytes are "
                                     f"not UTF-8 (offset {e.start})") from None
        return self._tok.encode(text, add_special_tokens=False).ids

    def id_to_token(self, token_id: int) -> bytes:
        """The bytes of one id (special tokens: ``b""``)."""
        token_id = int(token_id)
        token = self._tok.id_to_token(token_id)
        if token is None:
            raise TokenizerError(f"token id {token_id} is not in {self.path} "
                                 f"(vocab size {self.vocab_size})")
        if token_id in self._special:
            return b""
        if self._byte_level and all(ch in self._alphabet for ch in token):
            return bytes(self._alphabet[ch] for ch in token)
        return token.encode("utf-8")

    def decode(self, ids: Iterable[int]) -> bytes:
        ids = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        if self._byte_level:
            return b"".join(map(self.id_to_token, ids))
        for token_id in ids:
            self.id_to_token(token_id)  # range check with a clear error
        return self._tok.decode(ids, skip_special_tokens=True).encode("utf-8")

    def decode_text(self, ids: Iterable[int]) -> str:
        return self.decode(ids).decode("utf-8", errors="replace")

    def stream(self) -> StreamDecoder | _TextDiffStream:
        if self._byte_level:
            return StreamDecoder(self.id_to_token)
        return _TextDiffStream(self.decode_text)


