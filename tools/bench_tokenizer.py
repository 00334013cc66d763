"""Encode speed of our World tokenizer against ChatRWKV's TRIE_TOKENIZER, measured in one run.

    python tools/bench_tokenizer.py                  # ~1 MiB of mixed multilingual text
    python tools/bench_tokenizer.py --size 4000000 --repeats 5

The text is lines drawn at random (seeded) from a multilingual sample, so it is not periodic.
Both tokenizers must give the same ids (exit status 1 otherwise). Times are the best of
``--repeats`` interleaved runs; ours starts every run with an empty piece cache. Also prints one
line per script (its sample lines repeated), then two inputs where caching cannot help: made-up
words and random bytes. Benchmarks, not tests: numbers vary run to run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from rwkv_relax.tokenizer import WorldTokenizer, default_world_vocab

SAMPLES = {
    "english": [
        "The quick brown fox jumps over the lazy dog.",
        "RWKV is an RNN with transformer-level performance, trained in parallel like a GPT.",
        "In 1969, two astronauts walked on the Moon while millions watched on television.",
        "She said, \"I'll be there at 7:30 p.m.\" -- but nobody believed her.",
        "Tokenizers split text into pieces; greedy longest match is the simplest rule.",
    ],
    "chinese": [
        "我们今天去公园玩，天气很好，阳光明媚。",
        "人工智能正在改变世界，语言模型可以写诗、编程和翻译。",
        "北京是中国的首都，有着三千多年的建城史。",
        "他说：“明天早上八点在图书馆门口见面。”",
    ],
    "japanese": [
        "日本語のテキストです。カタカナとひらがな、漢字が混ざっています。",
        "東京は日本の首都で、世界有数の大都市です。",
        "吾輩は猫である。名前はまだ無い。",
    ],
    "korean": [
        "한국어 텍스트입니다. 안녕하세요, 만나서 반갑습니다!",
        "서울은 대한민국의 수도이며 가장 큰 도시입니다.",
    ],
    "code": [
        "def encode(self, text: str) -> list[int]:\n\treturn self._encode(text.encode('utf-8'))",
        "for (int i = 0; i < n; ++i) {\r\n    sum += a[i] * b[i];\r\n}",
        "    if x is None:\n        raise ValueError(f\"bad {x!r}\")  # comment",
        "SELECT id, name FROM users WHERE age > 30 ORDER BY name;",
    ],
    "other": [
        "Привет, мир! Как дела? Всё хорошо, спасибо.",
        "مرحبا بالعالم، كيف حالك اليوم؟",
        "emoji 🦀🐍 family 👨‍👩‍👧‍👦 flag 🏳️‍🌈 thumbs 👍🏽 😀😀",
        "Ελληνικά, עברית, हिन्दी, ไทย: mixed scripts in one line.",
        "          whitespace runs\t\t\tand ==================== rules",
    ],
}


def mixed_text(size: int, seed: int) -> bytes:
    """About ``size`` bytes of lines drawn at random from all samples."""
    lines = [line.encode() for group in SAMPLES.values() for line in group]
    rng = np.random.default_rng(seed)
    out, n = [], 0
    while n < size:
        line = lines[rng.integers(len(lines))]
        out.append(line)
        n += len(line) + 1
    return b"\n".join(out)


def novel_words(size: int, seed: int) -> bytes:
    """Made-up words from random syllables: almost every piece is new, the cache barely helps."""
    rng = np.random.default_rng(seed)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["ing", "tion", "er"]
    words = ["".join(rng.choice(syllables, rng.integers(1, 5))) for _ in range(size // 6)]
    return " ".join(words).encode()[:size]


def compare(ours: WorldTokenizer, theirs, data: bytes, repeats: int) -> tuple[float, float, bool]:
    """Best-of-``repeats`` seconds for each, runs interleaved so both see the same machine load;
    ours starts every run with an empty piece cache."""
    t_ours = t_theirs = float("inf")
    for _ in range(repeats):
        ours._pieces.clear()
        t0 = time.perf_counter()
        ids_ours = ours.encode(data)
        t1 = time.perf_counter()
        ids_theirs = theirs.encodeBytes(data)
        t2 = time.perf_counter()
        t_ours, t_theirs = min(t_ours, t1 - t0), min(t_theirs, t2 - t1)
    return t_ours, t_theirs, ids_ours == ids_theirs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1 << 20, help="bytes of mixed text (default 1 MiB)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per tokenizer (best kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab", type=Path, default=None,
                        help="World vocab file (default: the one in the rwkv package)")
    args = parser.parse_args(argv)
    vocab = args.vocab or default_world_vocab()
    if vocab is None:
        print("error: no --vocab given and the rwkv package is not installed", file=sys.stderr)
        return 2
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    t0 = time.perf_counter()
    ours = WorldTokenizer(vocab)
    t1 = time.perf_counter()
    theirs = TRIE_TOKENIZER(str(vocab))
    t2 = time.perf_counter()
    print(f"load: ours {t1 - t0:.2f} s, TRIE_TOKENIZER {t2 - t1:.2f} s")

    ok = True
    data = mixed_text(args.size, args.seed)
    t_ours, t_theirs, same = compare(ours, theirs, data, args.repeats)
    ok &= same
    n_ids = len(ours.encode(data))
    print(f"mixed text, {len(data) / 2**20:.2f} MiB, {n_ids} tokens: ours {t_ours * 1e3:.0f} ms, "
          f"TRIE_TOKENIZER {t_theirs * 1e3:.0f} ms, ratio {t_theirs / t_ours:.1f}x, "
          f"ids {'equal' if same else 'DIFFER'}")
    for name, lines in SAMPLES.items():
        one = "\n".join(lines).encode()
        data = one * (args.size // 4 // len(one) + 1)
        t_ours, t_theirs, same = compare(ours, theirs, data, args.repeats)
        ok &= same
        print(f"  {name:<12} {len(data) / 2**10:.0f} KiB: ours {t_ours * 1e3:4.0f} ms, "
              f"TRIE_TOKENIZER {t_theirs * 1e3:4.0f} ms, ratio {t_theirs / t_ours:4.1f}x"
              f"{'' if same else ', ids DIFFER'}")
    for name, data in [("novel words", novel_words(args.size // 4, args.seed)),
                       ("random bytes", np.random.default_rng(args.seed).integers(
                           0, 256, args.size // 4, dtype=np.uint8).tobytes())]:
        t_ours, t_theirs, same = compare(ours, theirs, data, args.repeats)
        ok &= same
        print(f"  {name:<12} {len(data) / 2**10:.0f} KiB: ours {t_ours * 1e3:4.0f} ms, "
              f"TRIE_TOKENIZER {t_theirs * 1e3:4.0f} ms, ratio {t_theirs / t_ours:4.1f}x"
              f"{'' if same else ', ids DIFFER'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
