"""World tokenizer against ChatRWKV's TRIE_TOKENIZER, streaming, vocab errors, HF tokenizer.json."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rwkv_relax.errors import RWKVRelaxError
from rwkv_relax.runtime.tokenizers import world as tk
from rwkv_relax.tokenizer import (
    HFTokenizer,
    StreamDecoder,
    TokenizerError,
    WorldTokenizer,
    default_world_vocab,
    load_tokenizer,
)

VOCAB = default_world_vocab()
needs_rwkv = pytest.mark.skipif(VOCAB is None, reason="the rwkv package (World vocab) is not installed")

CORPUS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "中文测试：我们今天去公园玩，天气很好。人工智能正在改变世界。",
    "日本語のテキストです。カタカナとひらがな、漢字が混ざっています。",
    "한국어 텍스트입니다. 안녕하세요, 만나서 반갑습니다!",
    "emoji 🦀🐍 family 👨‍👩‍👧‍👦 flag 🏳️‍🌈 skin 👍🏽 keycap 1️⃣ 😀😀😀",
    "def f(x):\n\tif x:\n\t\treturn x * 2  # doubled\n\treturn None\n",
    "int main() {\r\n    printf(\"%d\\n\", 42);\r\n    return 0;\r\n}\r\n",
    "    leading spaces, trailing spaces    \n\n\n\t\t\t  \t \u3000 \u00a0 end",
    "mixed: English 中文 日本語 한국어 Русский العربية עברית हिन्दी ไทย Ελληνικά",
    "a" * 300 + "b" * 17 + " " * 129 + "=" * 80 + "\n" * 40 + "哈" * 50,
    "combining: e\u0301 a\u0300\u0301\u0302 Zalgo: Z\u0336\u0321a\u0337l\u0335g\u0334o\u0338",
    "math ∀x∈ℝ: x² ≥ 0, ∑ᵢ aᵢ ≤ ∞; fancy 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛; private \ue000\U0010ffff",
    "controls \x00\x01\x1b[31m red \x7f bom \ufeff zwsp \u200b nbsp\u00a0 ls\u2028 ps\u2029",
    "URL https://example.com/path?q=1&r=%E4%B8%AD#frag  email a.b@c.de  1234567890 3.14159",
    "<|endoftext|> User: hi\n\nAssistant: hello\n\nUser:",
    "",
]
INVALID_UTF8 = [
    b"\xff", b"\xfe\xff", b"\x80", b"\xbf\xbf\xbf", b"\xc0\x80", b"\xe4\xb8", b"\xe4\xb8A",
    b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"abc\xe4\xb8\xad\xe4def",
    bytes(range(256)), bytes(range(255, -1, -1)) * 3, "中文".encode("utf-16-le"),
]


@pytest.fixture(scope="module")
def world():
    if VOCAB is None:
        pytest.skip("the rwkv package (World vocab) is not installed")
    return WorldTokenizer(VOCAB)


@pytest.fixture(scope="module")
def trie():
    rwkv_tokenizer = pytest.importorskip("rwkv.rwkv_tokenizer")
    return rwkv_tokenizer.TRIE_TOKENIZER(str(VOCAB))


def write_vocab(path, lines, newline="\n"):
    path.write_bytes(newline.join(lines).encode("utf-8") + newline.encode())
    return path


# ---- equality with TRIE_TOKENIZER ---------------------------------------------------------

@needs_rwkv
@pytest.mark.parametrize("text", CORPUS, ids=range(len(CORPUS)))
def test_ids_equal_trie_tokenizer(world, trie, text):
    assert world.encode(text) == trie.encode(text)
    assert world.encode(text.encode("utf-8")) == trie.encode(text)


@needs_rwkv
def test_long_input_equal_trie_tokenizer(world, trie):
    # long inputs take the cut-and-cache path; run it twice so the second pass hits the cache
    text = "\n".join(CORPUS * 7)
    assert len(text.encode()) > 4 * tk._CUT_MIN_INPUT
    expected = trie.encode(text)
    assert world.encode(text) == expected
    assert world.encode(text) == expected


@needs_rwkv
@pytest.mark.parametrize("data", INVALID_UTF8, ids=range(len(INVALID_UTF8)))
def test_invalid_utf8_bytes_equal_trie_tokenizer(world, trie, data):
    assert world.encode(data) == trie.encodeBytes(data)
    assert world.decode(world.encode(data)) == data


@needs_rwkv
def test_random_bytes_equal_trie_tokenizer(world, trie, rng):
    for n in (1, 7, 255, 256, 1000, 5000):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert world.encode(data) == trie.encodeBytes(data)
    # bytes drawn from a few values make long runs of multi-byte tokens
    data = rng.choice(np.frombuffer(b" ea\n\xe4\xb8\xad", np.uint8), 3000).tobytes()
    assert world.encode(data) == trie.encodeBytes(data)


@needs_rwkv
@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=700))
def test_hypothesis_bytes(world, trie, data):
    ids = world.encode(data)
    assert ids == trie.encodeBytes(data)
    assert world.decode(ids) == data


@needs_rwkv
@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=300))
def test_hypothesis_text(world, trie, text):
    ids = world.encode(text)
    assert ids == trie.encode(text)
    assert world.decode_text(ids) == text


@needs_rwkv
def test_cache_eviction_keeps_ids(world, trie, monkeypatch):
    monkeypatch.setattr(tk, "_PIECE_CACHE_MAX", 8)
    world._pieces.clear()
    text = "\n".join(CORPUS * 3)
    assert world.encode(text) == trie.encode(text)
    assert len(world._pieces) <= 8


@needs_rwkv
def test_cache_emptied_by_another_thread(world, trie):
    class EmptiedMidway(dict):  # as if another thread cleared the cache during encode
        def __getitem__(self, key):
            self.clear()
            raise KeyError(key)

    world._pieces = EmptiedMidway()
    try:
        text = "\n".join(CORPUS)
        assert world.encode(text) == trie.encode(text)
    finally:
        world._pieces = {}


# ---- decode and properties ----------------------------------------------------------------

@needs_rwkv
def test_decode_and_properties(world):
    assert world.vocab_size == 65530 and world.eos_id == 0
    ids = world.encode("中文 text")
    assert world.decode(np.array(ids)) == "中文 text".encode()
    assert world.decode([0, *ids, 0]) == "中文 text".encode()  # end-of-text decodes to nothing
    assert b"".join(map(world.id_to_token, ids)) == world.decode(ids)
    assert world.decode_text(world.encode(b"ok\xffok")) == "ok\ufffdok"
    for bad in (-1, 65530, 10**9):
        with pytest.raises(TokenizerError, match=f"token id {bad} is not in"):
            world.decode([1, bad])


@needs_rwkv
def test_every_id_decodes_like_trie_tokenizer(world, trie):
    assert set(trie.idx2token) == set(range(1, world.vocab_size))
    assert all(world.id_to_token(i) == token for i, token in trie.idx2token.items())


@needs_rwkv
def test_unpaired_surrogate_is_an_error(world, trie):
    with pytest.raises(UnicodeEncodeError):  # TRIE_TOKENIZER: str.encode's own error
        trie.encode("a\ud800b")
    with pytest.raises(TokenizerError, match="unpaired surrogate at index 1"):
        world.encode("a\ud800b")


# ---- streaming ----------------------------------------------------------------------------

@needs_rwkv
def test_stream_reassembles_split_characters(world):
    text = "crab 🦀 family 👨‍👩‍👧‍👦 中文 ꙮ end"
    ids = world.encode(text)
    # these characters really are split over several tokens
    assert len(world.encode("🦀")) == 3 and len(world.encode("ꙮ")) == 3
    stream = world.stream()
    pieces = [stream.put(i) for i in ids]
    assert "".join(pieces) + stream.flush() == text
    assert "\ufffd" not in "".join(pieces)
    assert "" in pieces  # held back while a character was incomplete


@needs_rwkv
def test_stream_holds_back_incomplete_sequence(world):
    first, rest = world.encode(b"\xf0\x9f"), world.encode(b"\xa6\x80")  # 🦀 = f0 9f a6 80
    stream = world.stream()
    assert [stream.put(i) for i in first] == [""] * len(first)
    assert "".join(stream.put(i) for i in rest) == "🦀"
    # an incomplete tail at the end becomes U+FFFD; invalid bytes come out at once
    assert "".join(stream.put(i) for i in world.encode(b"\xe4\xb8")) == ""
    assert stream.flush() == "\ufffd"
    assert stream.put(world.encode(b"\xff")[0]) == "\ufffd"


@needs_rwkv
@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200))
def test_stream_equals_decode_text(world, data):
    ids = world.encode(data)
    stream = world.stream()
    assert "".join(stream.put(i) for i in ids) + stream.flush() == world.decode_text(ids)


def test_stream_decoder_on_raw_bytes():
    chunks = [b"a", b"\xe4", b"\xb8", b"\xad", b"\xff", b"b"]
    stream = StreamDecoder(lambda i: chunks[i])
    assert [stream.put(i) for i in range(len(chunks))] == ["a", "", "", "中", "\ufffd", "b"]


# ---- vocab files --------------------------------------------------------------------------

def test_crlf_vocab_and_literals(tmp_path):
    lines = [f"{b + 1} {bytes([b])!r} 1" for b in range(256)]
    lines += ["257 'ab' 2", '258 "it\'s" 4', "259 b'\\xe4\\xb8' 2", "260 '中文' 6", "261 ' a b ' 5"]
    path = write_vocab(tmp_path / "vocab.txt", lines, newline="\r\n")
    tok = WorldTokenizer(path)
    assert tok.vocab_size == 262
    assert tok.encode("abit's中文 a b x") == [257, 258, 260, 261, 121]
    assert tok.decode([259]) == b"\xe4\xb8"
    assert tok.encode("中") == [259, 174]  # longest match: the 2-byte bytes token, then 0xad


@needs_rwkv
def test_same_as_trie_tokenizer_on_small_vocab_with_duplicate_token(tmp_path):
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER
    lines = [f"{b + 1} {bytes([b])!r} 1" for b in range(256)]
    lines += ["257 'ab' 2", "258 'abc' 3", "259 'ab' 2", "260 'bcd' 3"]  # 'ab' twice: later id wins
    path = write_vocab(tmp_path / "vocab.txt", lines, newline="\r\n")
    ours, theirs = WorldTokenizer(path), TRIE_TOKENIZER(str(path))
    for text in ["ab", "abc", "abcd", "abd", "xbcdab", "aabbccdd" * 50]:
        assert ours.encode(text) == theirs.encode(text)
    assert ours.encode("ab") == [259] and ours.decode([257]) == ours.decode([259]) == b"ab"


def test_byte_missing_from_vocab(tmp_path):
    path = write_vocab(tmp_path / "vocab.txt", ["1 'a' 1", "2 'bc' 2"])
    tok = WorldTokenizer(path)
    assert tok.encode("abca") == [1, 2, 1]
    with pytest.raises(TokenizerError, match=r"byte 0x62 at offset 1 starts no token"):
        tok.encode("abb")
    with pytest.raises(TokenizerError, match=r"byte 0x78 at offset 300"):
        tok.encode("a" * 300 + "x")


@needs_rwkv
def test_trie_tokenizer_crashes_on_byte_missing_from_vocab(tmp_path):
    # why we raise our own error: TRIE_TOKENIZER fails with an internal UnboundLocalError
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER
    path = write_vocab(tmp_path / "vocab.txt", ["1 'a' 1", "2 'bc' 2"])
    with pytest.raises(UnboundLocalError):
        TRIE_TOKENIZER(str(path)).encode("ab")


@pytest.mark.parametrize("lines, lineno, message", [
    (["1 'a' 1", "2 'b 1"], 2, "not a Python literal"),
    (["1 'a' 1", "2 os.system('x') 1"], 2, "not a Python literal"),
    (["1 'a' 1", "", "3 'abc' 2"], 3, "token is 3 bytes, the line says 2"),
    (["1 'a' 1", "2 '中' 1"], 2, "token is 3 bytes, the line says 1"),
    (["1 'a' 1", "1 'b' 1"], 2, "duplicate id 1"),
    (["1 'a' 1", "two 'b' 1"], 2, "not an integer"),
    (["1 'a' 1", "2 'b'"], 2, "fewer than 3 fields"),
    (["1 'a' 1", "2 42 1"], 2, "token literal is a int"),
    (["1 'a' 1", "0 'b' 1"], 2, "0 is end-of-text"),
    (["1 '' 0"], 1, "empty token"),
    (["1 'a' 1", "2 '\\ud800' 3"], 2, "unpaired surrogate"),
])
def test_malformed_vocab_line(tmp_path, lines, lineno, message):
    path = write_vocab(tmp_path / "vocab.txt", lines, newline="\r\n")
    with pytest.raises(TokenizerError, match=message) as info:
        WorldTokenizer(path)
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{path}:{lineno}: ")
    assert isinstance(info.value, RWKVRelaxError)


def test_missing_and_empty_vocab(tmp_path):
    with pytest.raises(TokenizerError, match="not found") as info:
        WorldTokenizer(tmp_path / "nope.txt")
    assert str(tmp_path / "nope.txt") in str(info.value)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"\r\n\r\n")
    with pytest.raises(TokenizerError, match="has no tokens") as info:
        WorldTokenizer(empty)
    assert str(info.value).startswith(str(empty)) and "\n" not in str(info.value)


# ---- Hugging Face tokenizer.json ----------------------------------------------------------

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "The dog sleeps; the fox runs.",
             "中文测试，我们今天去公园玩。", "Hello world, hello tokenizer!"]


@pytest.fixture(scope="module")
def bpe_json(tmp_path_factory):
    """A tiny GPT-NeoX-style byte-level BPE (special <|endoftext|>), trained on a few sentences."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES * 5, trainer)
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def wordlevel_json(tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers
    vocab = {"[UNK]": 0, "hello": 1, "world": 2, "the": 3, "fox": 4, "!": 5}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path_factory.mktemp("wordlevel") / "tokenizer.json"
    tok.save(str(path))
    return path


def test_hf_byte_level_bpe(bpe_json):
    from tokenizers import Tokenizer
    hf, ref = HFTokenizer(bpe_json), Tokenizer.from_file(str(bpe_json))
    assert hf.eos_id == ref.token_to_id("<|endoftext|>") == 0
    assert hf.vocab_size == ref.get_vocab_size(with_added_tokens=True)
    for text in SENTENCES + ["unseen wörds 🦀 and 中文", ""]:
        ids = hf.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False).ids
        assert hf.encode(text.encode()) == ids
        assert hf.decode(ids) == text.encode() and hf.decode_text(ids) == text
    assert hf.decode([hf.eos_id, *hf.encode("fox")]) == b"fox"
    # the 3 bytes of an unseen CJK character are separate tokens: streaming holds them back
    ids = hf.encode("鱻!")
    assert len(ids) > 2
    stream = hf.stream()
    pieces = [stream.put(i) for i in ids]
    assert pieces[0] == "" and "".join(pieces) + stream.flush() == "鱻!"
    assert hf.decode_text(ids[:1]) == "\ufffd"
    with pytest.raises(TokenizerError, match="token id 100000 is not in"):
        hf.decode([100000])
    with pytest.raises(TokenizerError, match="not UTF-8"):
        hf.encode(b"\xff")


def test_hf_word_level(wordlevel_json):
    hf = HFTokenizer(wordlevel_json)
    ids = hf.encode("hello world! the fox")
    assert ids == [1, 2, 5, 3, 4]
    assert hf.encode("hello zebra") == [1, 0]
    assert hf.decode_text(ids) == "hello world ! the fox"  # the default decoder joins with spaces
    stream = hf.stream()
    assert "".join(stream.put(i) for i in ids) + stream.flush() == hf.decode_text(ids)


def test_hf_errors(tmp_path, bpe_json, monkeypatch):
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"model": {"type": "Nope"}}')
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json") as info:
        HFTokenizer(bad)
    assert "\n" not in str(info.value) and str(bad) in str(info.value)
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
        HFTokenizer(bad)
    with pytest.raises(TokenizerError, match="not found"):
        HFTokenizer(tmp_path / "missing.json")
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import tokenizers -> ImportError
    with pytest.raises(TokenizerError, match="needs the 'tokenizers' package"):
        HFTokenizer(bpe_json)


# ---- load_tokenizer -----------------------------------------------------------------------

def test_load_tokenizer(tmp_path, bpe_json):
    folder = tmp_path / "model"
    folder.mkdir()
    with pytest.raises(TokenizerError, match="found none"):
        load_tokenizer(folder)
    vocab = write_vocab(folder / "rwkv_vocab_test.txt", ["1 'a' 1", "2 'b' 1"])
    assert isinstance(load_tokenizer(vocab), WorldTokenizer)
    assert isinstance(load_tokenizer(folder), WorldTokenizer)
    (folder / "tokenizer.json").write_bytes(bpe_json.read_bytes())
    with pytest.raises(TokenizerError, match="expected exactly one.*found rwkv_vocab_test.txt, tokenizer.json"):
        load_tokenizer(folder)
    vocab.unlink()
    assert isinstance(load_tokenizer(folder), HFTokenizer)
    assert isinstance(load_tokenizer(bpe_json), HFTokenizer)
    weights = tmp_path / "model.pth"
    weights.write_bytes(b"")
    with pytest.raises(TokenizerError, match="unknown tokenizer file"):
        load_tokenizer(weights)
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer(tmp_path / "absent.txt")


@needs_rwkv
def test_default_world_vocab():
    assert VOCAB.name == "rwkv_vocab_v20230424.txt" and VOCAB.is_file()
