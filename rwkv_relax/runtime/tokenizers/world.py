"""The RWKV World tokenizer: ChatRWKV's ``rwkv.rwkv_tokenizer.TRIE_TOKENIZER``, id for id.

The input is UTF-8 bytes, and from each position the longest vocabulary token that is a prefix of
the rest is taken (greedy, no merges, no normalisation). It is faster because no Python code runs
per byte:

* the trie is compiled into one ``re`` pattern (greedy-optional branches, deepest first), so the
  C regex engine finds each longest match;
* long inputs are first cut where no token can span: between two bytes ``a b`` such that no
  vocabulary token contains ``a b``. Every cut is then a token boundary of the greedy match, so
  each piece tokenizes on its own. Pieces repeat (words, punctuation): their ids are cached, and
  the new ones are matched together in one regex pass.
"""
from __future__ import annotations

import ast
import functools
import itertools
import re
import sys
from pathlib import Path
from typing import Iterable, NoReturn

import numpy as np

from .common import EOS_ID, StreamDecoder, TokenizerError, as_bytes


def read_world_vocab(path: str | Path) -> dict[int, bytes]:
    """Parse a World vocab file: lines ``<id> <python str or bytes literal> <byte length>``.

    Literals go through ``ast.literal_eval`` (never ``eval``); str tokens are UTF-8 encoded and the
    byte count must match the last field. CRLF line ends and blank lines are accepted. Errors name
    the file and 1-based line.
    """
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"{path}: World vocab file not found")
    tokens: dict[int, bytes] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue

            def bad(why: str) -> TokenizerError:
                return TokenizerError(f"{path}:{lineno}: {why} in {line[:80]!r}; expected "
                                      "'<id> <str or bytes literal> <byte length>'")

            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                raise bad("line is not UTF-8") from None
            first, last = text.find(" "), text.rfind(" ")
            if first < 0 or first == last:
                raise bad("fewer than 3 fields")
            try:
                token_id, length = int(text[:first]), int(text[last + 1:])
            except ValueError:
                raise bad("id or byte length is not an integer") from None
            literal = text[first + 1:last].strip()
            if _is_plain_str_literal(literal):
                token = literal[1:-1]  # what literal_eval returns, ~50x faster
            else:
                try:
                    token = ast.literal_eval(literal)
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    raise bad("token is not a Python literal") from None
            if isinstance(token, str):
                try:
                    token = token.encode("utf-8")
                except UnicodeEncodeError:
                    raise bad("str token has an unpaired surrogate (write it as bytes)") from None
            if not isinstance(token, bytes):
                raise bad(f"token literal is a {type(token).__name__}, not str or bytes")
            if not token:
                raise bad("empty token")
            if len(token) != length:
                raise bad(f"token is {len(token)} bytes, the line says {length}")
            if token_id <= EOS_ID:
                raise bad(f"id {token_id} is not positive (0 is end-of-text)")
            if token_id in tokens:
                raise bad(f"duplicate id {token_id}")
            tokens[token_id] = token
    if not tokens:
        raise TokenizerError(f"{path}: World vocab file has no tokens")
    return tokens


def _is_plain_str_literal(literal: str) -> bool:
    """'...' or "..." with no escapes and no inner quote: its value is the text between quotes."""
    quote = literal[:1]
    return (len(literal) >= 2 and quote in ("'", '"') and literal[-1] == quote
            and not any(c in literal[1:-1] for c in (quote, "\\", "\r", "\n", "\0")))


def _trie_pattern(tokens: Iterable[bytes]) -> bytes:
    """A regex whose leftmost match at a position is the longest token starting there.

    Each trie node becomes ``(?:child1...|child2...|)``: alternatives are tried in order and each
    consumes a different first byte, so the engine walks the single trie path, deepest match
    first, and backtracks to the nearest token (the trailing empty alternative) only when the
    path dies -- exactly TRIE_TOKENIZER's ``find_longest``. Below the root, leaf children are
    merged into one character class tried first; larger subtrees come before smaller ones, which
    puts common continuations early in the engine's linear scan over alternatives.
    """
    root: dict = {}
    for token in tokens:
        node = root
        for byte in token:
            node = node.setdefault(byte, {})
        node[None] = None  # marks "a token ends here"

    sizes: dict[int, int] = {}

    def size(node: dict) -> int:  # tokens in the subtree, memoised by node identity
        key = id(node)
        if key not in sizes:
            sizes[key] = (None in node) + sum(size(c) for b, c in node.items() if b is not None)
        return sizes[key]

    def lit(byte: int) -> bytes:
        return bytes([byte]) if byte >= 0x80 or chr(byte).isalnum() else b"\\x%02x" % byte

    def alternatives(node: dict) -> list[bytes]:
        children = [b for b in node if b is not None]
        leaves = sorted(b for b in children if len(node[b]) == 1 and None in node[b])
        inner = sorted((b for b in children if b not in leaves), key=lambda b: (-size(node[b]), b))
        alts = []
        if node is root:  # only literals at the top: sre then skips non-matching chars quickly
            inner, leaves = inner + leaves, []
        if leaves:
            alts.append(b"[" + b"".join(map(lit, leaves)) + b"]" if len(leaves) > 1 else lit(leaves[0]))
        for byte in inner:
            child = node[byte]
            rest = alternatives(child)
            if not rest:  # a leaf (only at the root)
                alts.append(lit(byte))
            elif None in child:  # a token ends at child: the empty alternative lets the path stop
                alts.append(lit(byte) + b"(?:" + b"|".join(rest) + b"|)")
            elif len(rest) == 1:  # a single way on: no group needed
                alts.append(lit(byte) + rest[0])
            else:
                alts.append(lit(byte) + b"(?:" + b"|".join(rest) + b")")
        return alts

    return b"|".join(alternatives(root))


@functools.lru_cache(maxsize=4)
def _compile_trie(tokens: tuple[bytes, ...]) -> re.Pattern:
    """The compiled :func:`_trie_pattern` (about a second), as a str pattern over latin-1 text;
    kept for other tokenizers of the same vocabulary."""
    # the pattern builder and sre's parser recurse a few frames per trie level (token byte)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 8 * max(map(len, tokens)) + 1000))
    try:
        return re.compile(_trie_pattern(tokens).decode("latin-1"))
    finally:
        sys.setrecursionlimit(limit)


# Encoding works on the latin-1 view of the input (one char per byte, U+0000..U+00FF), so that
# U+0100 can mark cuts and the pieces come from one str.split.
_CUT = "\u0100"
_PIECE_CACHE_MAX = 1 << 16   # pieces remembered by one tokenizer (then the cache is emptied)
_PIECE_CACHE_MAX_LEN = 64    # longer pieces are tokenized every time, not remembered
_CUT_MIN_INPUT = 256         # shorter inputs go straight to the regex (numpy costs ~10 us)


class WorldTokenizer:
    """The RWKV World tokenizer (``rwkv_vocab_v20230424.txt``), id-for-id equal to TRIE_TOKENIZER.

    ``encode`` takes str (UTF-8 encoded) or bytes (any bytes: every single byte is a token in the
    shipped vocab); ``decode`` returns bytes, ``decode_text`` a str with U+FFFD for invalid UTF-8.
    If two ids carry the same bytes, encoding gives the later one, as TRIE_TOKENIZER does.
    """

    eos_id = EOS_ID

    def __init__(self, vocab_path: str | Path):
        self.path = Path(vocab_path)
        vocab = read_world_vocab(self.path)
        self._id_to_bytes: list[bytes | None] = [None] * (max(vocab) + 1)
        self._id_to_bytes[EOS_ID] = b""
        for token_id, token in vocab.items():
            self._id_to_bytes[token_id] = token
        # file order, later ids overwriting earlier ones: TRIE_TOKENIZER's token2idx
        by_bytes = {token: token_id for token_id, token in vocab.items()}
        self._latin1_to_id = {token.decode("latin-1"): i for token, i in by_bytes.items()}
        self._regex = _compile_trie(tuple(by_bytes))

        # inside[a << 8 | b]: some token contains the byte pair a b; elsewhere no token spans
        joined = np.frombuffer(b"".join(by_bytes), dtype=np.uint8).astype(np.int32)
        pair = (joined[:-1] << 8) | joined[1:]
        last_bytes = np.cumsum([len(t) for t in by_bytes]) - 1  # pairs across two tokens
        self._inside_pair = np.zeros(1 << 16, dtype=bool)
        self._inside_pair[np.delete(pair, last_bytes[:-1])] = True
        self._pieces: dict[str, tuple[int, ...]] = {}  # latin-1 piece -> its ids

    @property
    def vocab_size(self) -> int:
        """Largest id + 1 (the embedding needs at least this many rows)."""
        return len(self._id_to_bytes)

    def id_to_token(self, token_id: int) -> bytes:
        """The bytes of one id (``b""`` for end-of-text)."""
        return self.decode([token_id])

    # ---- encode --------------------------------------------------------------------------
    def encode(self, text: str | bytes) -> list[int]:
        """Token ids of ``text`` (str is UTF-8 encoded; bytes are taken as they are)."""
        data = as_bytes(text)
        if len(data) < _CUT_MIN_INPUT:
            return self._match(data.decode("latin-1"), data)
        # cut between bytes a b where no token contains "a b": greedy matches never cross a cut
        a = np.frombuffer(data, dtype=np.uint8)
        cuts = np.flatnonzero(~self._inside_pair[(a[:-1].astype(np.int32) << 8) | a[1:]]) + 1
        marked = np.insert(a.astype("<u2"), cuts, ord(_CUT)).tobytes().decode("utf-16-le")
        pieces = marked.split(_CUT)
        known = self._pieces
        new = set(pieces).difference(known)
        if 2 * len(new) > len(pieces):  # mostly unseen text: caching would cost more than it saves
            return self._match(data.decode("latin-1"), data)
        if new:
            if len(known) + len(new) > _PIECE_CACHE_MAX:
                known.clear()
            known.update(self._match_pieces(list(new), data))
        try:
            ids = list(itertools.chain.from_iterable(map(known.__getitem__, pieces)))
        except KeyError:  # another thread emptied the cache meanwhile: match without it
            return self._match(marked, data)
        if len(known) > _PIECE_CACHE_MAX:  # this input alone had more new pieces than fit
            known.clear()
        for piece in new:
            if len(piece) > _PIECE_CACHE_MAX_LEN:
                known.pop(piece, None)
        return ids

    def _match(self, text: str, data: bytes) -> list[int]:
        """Ids of the longest-match tokens in ``text``: ``data`` in latin-1, maybe with cut marks
        (which never match)."""
        matches = self._regex.findall(text)
        if sum(map(len, matches)) != len(data):  # findall skipped a byte no token starts with
            self._raise_unencodable(data)
        return list(map(self._latin1_to_id.__getitem__, matches))

    def _match_pieces(self, pieces: list[str], data: bytes) -> dict[str, tuple[int, ...]]:
        """Tokenize many pieces in one regex pass over them joined by cut marks."""
        lengths = [len(p) for p in pieces]
        matches = self._regex.findall(_CUT.join(pieces))
        ids = list(map(self._latin1_to_id.__getitem__, matches))
        ends = np.cumsum(np.fromiter(map(len, matches), dtype=np.int64, count=len(matches)))
        if not len(ends) or ends[-1] != sum(lengths):
            self._raise_unencodable(data)
        # no match crosses a cut mark, so each piece's matches end exactly at its end
        bounds = np.searchsorted(ends, np.cumsum(lengths), side="right").tolist()
        return {p: tuple(ids[i:j]) for p, i, j in zip(pieces, [0, *bounds], bounds)}

    def _raise_unencodable(self, data: bytes) -> NoReturn:
        text, pos = data.decode("latin-1"), 0
        while pos < len(text):
            match = self._regex.match(text, pos)
            if match is None:
                raise TokenizerError(f"byte 0x{data[pos]:02x} at offset {pos} starts no token of "
                                     f"{self.path}; this vocabulary cannot encode it")
            pos = match.end()
        raise AssertionError("unreachable: every position matched")

    # ---- decode --------------------------------------------------------------------------
    def decode(self, ids: Iterable[int]) -> bytes:
        """The bytes of ``ids`` joined; end-of-text (0) decodes to nothing."""
        ids = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        if ids and min(ids) < 0:
            self._raise_bad_id(ids)
        try:
            return b"".join(map(self._id_to_bytes.__getitem__, ids))
        except (IndexError, TypeError):
            self._raise_bad_id(ids)

    def decode_text(self, ids: Iterable[int]) -> str:
        """``decode`` as str; invalid UTF-8 becomes U+FFFD."""
        return self.decode(ids).decode("utf-8", errors="replace")

    def stream(self) -> StreamDecoder:
        """A fresh :class:`StreamDecoder` over this vocabulary."""
        return StreamDecoder(self.id_to_token)

    def _raise_bad_id(self, ids: list) -> NoReturn:
        for token_id in ids:
            if not 0 <= token_id < len(self._id_to_bytes) or self._id_to_bytes[token_id] is None:
                raise TokenizerError(f"token id {token_id} is not in {self.path} "
                                     f"(ids 0..{len(self._id_to_bytes) - 1})")
        raise AssertionError("unreachable: all ids valid")


