"""Tokenizers for RWKV models: the World vocabulary (``world.py``) and Hugging Face
``tokenizer.json`` files (``hf.py``). Both give ``encode``, ``decode`` (bytes), ``decode_text``
and ``stream()``; :func:`load_tokenizer` picks one from a path. No TVM, no torch."""
from __future__ import annotations

from pathlib import Path

from .common import EOS_ID, HF_TOKENIZER_NAME, WORLD_VOCAB_NAME, StreamDecoder, TokenizerError, default_world_vocab
from .hf import HFTokenizer
from .world import WorldTokenizer, read_world_vocab

__all__ = ["EOS_ID", "HF_TOKENIZER_NAME", "WORLD_VOCAB_NAME", "StreamDecoder", "TokenizerError",
           "default_world_vocab", "HFTokenizer", "WorldTokenizer", "read_world_vocab", "load_tokenizer",
           "AnyTokenizer"]

AnyTokenizer = WorldTokenizer | HFTokenizer


def load_tokenizer(path: str | Path) -> AnyTokenizer:
    """A World vocab ``.txt`` -> WorldTokenizer; a ``tokenizer.json`` -> HFTokenizer; a folder ->
    whichever one of ``tokenizer.json`` / ``*vocab*.txt`` it holds."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and (
            p.name == HF_TOKENIZER_NAME or (p.suffix == ".txt" and "vocab" in p.name)))
        if len(found) != 1:
            what = "none" if not found else ", ".join(p.name for p in found)
            raise TokenizerError(f"{path}: expected exactly one of {HF_TOKENIZER_NAME} or a World "
                                 f"'*vocab*.txt' file in the folder; found {what}")
        path = found[0]
    if not path.exists():
        raise TokenizerError(f"{path}: tokenizer file not found")
    if path.suffix == ".txt":
        return WorldTokenizer(path)
    if path.suffix == ".json":
        return HFTokenizer(path)
    raise TokenizerError(f"{path}: unknown tokenizer file; expected a World vocab .txt "
                         f"(like {WORLD_VOCAB_NAME}) or a {HF_TOKENIZER_NAME}")
