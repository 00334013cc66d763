"""Next-token sampling as in ChatRWKV (``rwkv.utils.PIPELINE``), seeded and reproducible.

One step of generation::

    sampler = Sampler(temperature=1.0, top_p=0.85, seed=0, token_stop=[0])
    token = sampler.sample(logits)          # logits: float (V,) from the model; sampler unchanged
    if sampler.is_stop_token(token):
        ...                                 # ChatRWKV stops here; the token is not accepted
    sampler.accept(token)                   # penalties: decay old counts, count this token

Names map to ChatRWKV's ``PIPELINE_ARGS`` (same defaults):

=====================  =================  =================================================
here                   PIPELINE_ARGS      meaning
=====================  =================  =================================================
temperature = 1.0      temperature        0 means greedy (argmax of the penalised logits)
top_p = 0.85           top_p              keep tokens with prob >= the prob at which the
                                          sorted cumulative sum reaches top_p (ties kept)
top_k = 0              top_k              keep the k most probable; 0 = off
presence_penalty=0.2   alpha_presence     subtracted from the logit of every seen token
frequency_penalty=0.2  alpha_frequency    subtracted once per (decayed) occurrence
penalty_decay = 0.996  alpha_decay        occurrence counts are multiplied by it each step
token_ban = ()         token_ban          logits set to -inf
token_stop = ()        token_stop         :meth:`is_stop_token`
=====================  =================  =================================================

The logit adjustment is ChatRWKV's ``out[n] -= alpha_presence + occurrence[n] * alpha_frequency``;
its sampler filters softmax probabilities by top-p then top-k and only then applies the
temperature (``probs ** (1 / T)``), which equals a softmax of ``logits / T`` over the kept tokens.
Two deliberate differences: ``top_p >= 1`` (or a top_p the cumulative sum never reaches) keeps
every token -- ChatRWKV's float32 cumulative sum often stays just below 1.0, and then its cutoff
is the top token, i.e. ``top_p=1.0`` samples greedily about half the time; and temperature 0 is
a plain argmax instead of a random pick among tied maxima.
"""
from __future__ import annotations

from typing import Callable, Collection, Iterable

import numpy as np

from ..config import is_finite_number, is_integer
from ..errors import RWKVRelaxError


class SamplerError(RWKVRelaxError):
    """Sampling settings out of range, or logits that leave nothing to sample."""


class Sampler:
    """Penalised top-p / top-k / temperature sampling with its own seeded ``numpy`` generator.

    ``sample`` never changes the sampler; ``accept`` records a generated token for the penalties.
    Same seed + same logits + same accepted tokens give the same samples.

    ``uncounted_ids`` are tokens that get the presence penalty once seen but add nothing to the
    frequency count: ChatRWKV does this for tokens whose text is in ``' \\t0123456789'`` (see
    :func:`chatrwkv_uncounted_ids`). ``seed`` may also be a ``numpy.random.Generator``.
    """

    def __init__(self, *, temperature: float = 1.0, top_p: float = 0.85, top_k: int = 0,
                 presence_penalty: float = 0.2, frequency_penalty: float = 0.2,
                 penalty_decay: float = 0.996, token_ban: Iterable[int] = (),
                 token_stop: Iterable[int] = (), uncounted_ids: Collection[int] = (),
                 seed: int | np.random.Generator | None = None):
        for name, value in (("temperature", temperature), ("top_p", top_p), ("presence_penalty", presence_penalty),
                            ("frequency_penalty", frequency_penalty), ("penalty_decay", penalty_decay)):
            if not is_finite_number(value):
                raise SamplerError(f"{name} must be a finite number, got {value!r}")
        if not is_integer(top_k):
            raise SamplerError(f"top_k must be an integer (0 = off), got {top_k!r}")
        if temperature < 0:
            raise SamplerError(f"temperature must be >= 0, got {temperature}")
        if not 0 <= top_p:
            raise SamplerError(f"top_p must be >= 0, got {top_p}")
        if top_k < 0:
            raise SamplerError(f"top_k must be >= 0 (0 = off), got {top_k}")
        if not 0 <= penalty_decay <= 1:
            raise SamplerError(f"penalty_decay must be in [0, 1], got {penalty_decay}")
        self.temperature, self.top_p, self.top_k = float(temperature), float(top_p), int(top_k)
        self.presence_penalty, self.frequency_penalty = float(presence_penalty), float(frequency_penalty)
        self.penalty_decay = float(penalty_decay)
        self.token_ban = np.array(sorted(set(token_ban)), dtype=np.int64)
        self.token_stop = frozenset(token_stop)
        self.uncounted_ids = frozenset(uncounted_ids)
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.occurrence: dict[int, float] = {}  # token -> decayed count, ChatRWKV's `occurrence`

    @classmethod
    def from_pipeline_args(cls, args, **kwargs) -> "Sampler":
        """From a ChatRWKV ``PIPELINE_ARGS`` (or anything with its attribute names)."""
        return cls(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                   presence_penalty=args.alpha_presence, frequency_penalty=args.alpha_frequency,
                   penalty_decay=args.alpha_decay, token_ban=args.token_ban,
                   token_stop=args.token_stop, **kwargs)

    def reset(self) -> None:
        """Forget the occurrence counts (a new conversation); the random stream goes on."""
        self.occurrence.clear()

    # ---- one step --------------------------------------------------------------------------
    def adjust(self, logits: np.ndarray) -> np.ndarray:
        """Float64 copy of ``logits`` (V,) with bans (-inf) and presence/frequency penalties."""
        out = np.array(logits, dtype=np.float64).reshape(-1)
        if self.token_ban.size:
            out[self.token_ban[self.token_ban < out.size]] = -np.inf
        if self.occurrence:
            ids = np.fromiter(self.occurrence, dtype=np.int64, count=len(self.occurrence))
            counts = np.fromiter(self.occurrence.values(), dtype=np.float64, count=len(ids))
            out[ids] -= self.presence_penalty + counts * self.frequency_penalty
        return out

    def probs(self, logits: np.ndarray) -> np.ndarray:
        """The distribution :meth:`sample` draws from (float64, sums to 1)."""
        z = self.adjust(logits)
        if not np.isfinite(z).any():
            raise SamplerError("every token is banned or has a non-finite logit; nothing to sample")
        if np.isnan(z).any():
            raise SamplerError("logits contain NaN")
        if self.temperature == 0:
            p = np.zeros_like(z)
            p[int(np.argmax(z))] = 1.0
            return p
        p = np.exp(z - z.max())
        p /= p.sum()
        keep = np.ones(z.shape, dtype=bool)
        if self.top_p < 1:
            order = np.argsort(-p, kind="stable")
            cumulative = np.cumsum(p[order])
            cutoff = p[order[min(int(np.searchsorted(cumulative, self.top_p)), p.size - 1)]]
            keep &= p >= cutoff  # ChatRWKV: probs[probs < cutoff] = 0
        if 0 < self.top_k < p.size:
            keep[np.argsort(-p, kind="stable")[self.top_k:]] = False
        # ChatRWKV: probs ** (1 / T) after filtering == softmax(z / T) over the kept tokens
        zt = np.where(keep, z / self.temperature, -np.inf)
        q = np.exp(zt - zt.max())
        return q / q.sum()

    def sample(self, logits: np.ndarray) -> int:
        """Draw the next token from ``logits`` (V,); does not record it (see :meth:`accept`)."""
        p = self.probs(logits)
        support = np.flatnonzero(p)
        cdf = np.cumsum(p[support])
        u = self.rng.random() * cdf[-1]
        return int(support[min(int(np.searchsorted(cdf, u, side="right")), support.size - 1)])

    def accept(self, token: int) -> None:
        """Record a generated token: decay all counts, then count it (ChatRWKV's order)."""
        for seen in self.occurrence:
            self.occurrence[seen] *= self.penalty_decay
        weight = 0.0 if token in self.uncounted_ids else 1.0
        self.occurrence[int(token)] = self.occurrence.get(int(token), 0.0) + weight

    def is_stop_token(self, token: int) -> bool:
        return token in self.token_stop


def chatrwkv_uncounted_ids(decode: Callable[[list[int]], bytes], vocab_size: int) -> frozenset[int]:
    """Ids ChatRWKV counts with weight 0 in ``occurrence``: its test is
    ``decode([token]) in ' \\t0123456789'`` -- a *substring* test, so e.g. ``'12'`` qualifies."""
    alphabet = b" \t0123456789"
    found = set()
    for token_id in range(vocab_size):
        try:
            token = decode([token_id])
        except RWKVRelaxError:
            continue
        if token and token in alphabet:
            found.add(token_id)
    return frozenset(found)


class StopStrings:
    """Watches streamed text for stop strings, holding back a tail that could begin one.

    ``put(text)`` returns what is safe to show; once a stop string appears, ``stopped`` is True and
    the text before it is the last thing returned (the stop string itself is dropped).
    ``flush()`` returns the held-back tail at the end of a generation that did not stop.
    """

    def __init__(self, stop_strings: Iterable[str]):
        self.stop_strings = tuple(s for s in stop_strings if s)
        self._hold = max((len(s) for s in self.stop_strings), default=1) - 1
        self._pending = ""
        self.stopped = False

    def put(self, text: str) -> str:
        if self.stopped:
            return ""
        self._pending += text
        hit = find_stop(self._pending, self.stop_strings)
        if hit is not None:
            self.stopped = True
            out, self._pending = self._pending[:hit], ""
            return out
        # keep only the longest tail that is a prefix of some stop string
        keep = 0
        for n in range(min(self._hold, len(self._pending)), 0, -1):
            tail = self._pending[-n:]
            if any(s.startswith(tail) for s in self.stop_strings):
                keep = n
                break
        out = self._pending[:len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep:]
        return out

    def flush(self) -> str:
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out


def find_stop(text: str, stop_strings: Iterable[str]) -> int | None:
    """Index in ``text`` where the earliest stop string begins, or None."""
    hits = [i for i in (text.find(s) for s in stop_strings if s) if i >= 0]
    return min(hits) if hits else None
