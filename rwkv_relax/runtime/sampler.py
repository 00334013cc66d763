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

The distribution is computed in float64 and is bit for bit that of sorting the whole vocabulary,
without the sort: the filters only need the head of it (:func:`_kept`), and the softmax passes
reuse the sampler's work vectors. A token costs ~0.15-0.2 ms at vocab 65536 (a full ``argsort``:
~8 ms). llvm libraries draw the same tokens in the library instead (``sample_logits``,
``tir_kernels/sampling.py``; ``CompiledModel.sample`` passes it :meth:`Sampler.kernel_args`): ~0.05
ms, and the logits never reach numpy.
"""
from __future__ import annotations

from typing import Callable, Collection, Iterable

import numpy as np

from ..config import is_finite_number, is_integer
from ..errors import RWKVRelaxError


class SamplerError(RWKVRelaxError):
    """Sampling settings out of range, or logits that leave nothing to sample."""


NOTHING_TO_SAMPLE = "every token is banned or has a non-finite logit; nothing to sample"
NAN_LOGITS = "logits contain NaN"
INF_LOGITS = "logits contain +inf (an overflow in the model?); nothing to sample"
# what a library's sample_logits kernel returns in place of a token (tir_kernels/sampling.py:
# NOTHING, NAN, POS_INF), for the errors :meth:`Sampler.sample` raises
KERNEL_ERRORS = {-1: NOTHING_TO_SAMPLE, -2: NAN_LOGITS, -3: INF_LOGITS}


class Sampler:
    """Penalised top-p / top-k / temperature sampling with its own seeded ``numpy`` generator.

    ``sample`` never changes the sampler; ``accept`` records a generated token for the penalties.
    Same seed + same logits + same accepted tokens give the same samples. A sampler keeps work
    vectors between calls: one sampler per generation, not shared between threads.

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
        # ChatRWKV's `occurrence` (token -> decayed count) as arrays, in order of first sight: one
        # vector multiply decays them all (a dict loop costs ~0.1 us a token, every step). The
        # tokens sit after the bans in _ids, the sampling kernel's adjustment ids as its int32
        # tensors take them, and the penalties go through one fp64 scratch: a token's
        # write_kernel_args is a few array copies, no new arrays (each numpy call costs 3-10 us
        # right after a decode step has pushed numpy's code and data out of the caches)
        self._ids = np.empty(self.token_ban.size + 64, np.int32)
        self._ids[:self.token_ban.size] = self.token_ban
        self._counts, self._penalty, self._n_seen = np.empty(64), np.empty(64), 0
        self._slot: dict[int, int] = {}
        self._buffers: tuple[np.ndarray, ...] | None = None  # see _scratch
        self._arange: np.ndarray | None = None

    @classmethod
    def from_pipeline_args(cls, args, **kwargs) -> "Sampler":
        """From a ChatRWKV ``PIPELINE_ARGS`` (or anything with its attribute names)."""
        return cls(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                   presence_penalty=args.alpha_presence, frequency_penalty=args.alpha_frequency,
                   penalty_decay=args.alpha_decay, token_ban=args.token_ban,
                   token_stop=args.token_stop, **kwargs)

    def reset(self) -> None:
        """Forget the occurrence counts (a new conversation); the random stream goes on."""
        self._n_seen = 0
        self._slot.clear()

    @property
    def occurrence(self) -> dict[int, float]:
        """Token -> decayed count (ChatRWKV's ``occurrence``), a copy."""
        return dict(zip(self._seen().tolist(), self._counts[:self._n_seen].tolist()))

    def _seen(self) -> np.ndarray:
        """The tokens seen, in order of first sight (a view)."""
        return self._ids[self.token_ban.size:self.token_ban.size + self._n_seen]

    def _penalties(self) -> np.ndarray:
        """presence + count * frequency per seen token, fp64 (a view of the scratch)."""
        n = self._n_seen
        penalty = np.multiply(self._counts[:n], self.frequency_penalty, out=self._penalty[:n])
        penalty += self.presence_penalty
        return penalty

    # ---- one step --------------------------------------------------------------------------
    def adjust(self, logits: np.ndarray) -> np.ndarray:
        """Float64 copy of ``logits`` (V,) with bans (-inf) and presence/frequency penalties."""
        return self._adjust(np.array(logits, dtype=np.float64).reshape(-1))

    def _adjust(self, out: np.ndarray) -> np.ndarray:
        ban = self.token_ban  # sorted
        if ban.size:
            out[ban if ban[-1] < out.size else ban[ban < out.size]] = -np.inf
        if self._n_seen:
            out[self._seen()] -= self._penalties()
        return out

    def _scratch(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Two (n,) float64 work vectors and one of zeros, kept between calls: a fresh 512 KiB
        array costs its page faults (~0.1 ms at V = 65536), more than the arithmetic on it."""
        if self._buffers is None or self._buffers[0].size != n:
            self._buffers = (np.empty(n), np.empty(n), np.zeros(n))
        return self._buffers

    def _all_ids(self, n: int) -> np.ndarray:
        if self._arange is None or self._arange.size != n:
            self._arange = np.arange(n)
        return self._arange

    def probs(self, logits: np.ndarray) -> np.ndarray:
        """The distribution :meth:`sample` draws from (float64 (V,), sums to 1)."""
        ids, q = self._support(logits)
        p = np.zeros(np.size(logits))
        p[ids] = q
        return p

    def sample(self, logits: np.ndarray, u: float | None = None) -> int:
        """Draw the next token from ``logits`` (V,); does not record it (see :meth:`accept`).
        ``u``: the uniform draw in [0, 1) to use instead of the next one from ``rng``."""
        ids, q = self._support(logits)
        cdf = np.cumsum(q, out=self._buffers[0][:q.size])  # z is free once _support is done
        u = (self.rng.random() if u is None else u) * cdf[-1]
        return int(ids[min(int(np.searchsorted(cdf, u, side="right")), ids.size - 1)])

    def kernel_args(self) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float]]:
        """What a library's ``sample_logits`` kernel takes for one draw (``tir_kernels/sampling.py``):
        the adjusted token ids (int32), the amounts subtracted from their logits (fp32; a ban
        subtracts +inf), and (temperature, top_p, top_k, u), ``u`` taken from ``rng`` as
        :meth:`sample` takes it."""
        ids, sub = np.empty(self.n_adjusted, np.int32), np.empty(self.n_adjusted, np.float32)
        return ids, sub, self.write_kernel_args(ids, sub)

    @property
    def n_adjusted(self) -> int:
        """How many (id, amount) adjustments :meth:`kernel_args` gives: bans and seen tokens."""
        return self.token_ban.size + self._n_seen

    def write_kernel_args(self, ids: np.ndarray, sub: np.ndarray) -> tuple[float, float, float, float]:
        """:meth:`kernel_args` written into ``ids`` (int32) and ``sub`` (fp32), at least
        :attr:`n_adjusted` long (views of the kernel's tensors: ``CompiledModel.sample_rows``),
        instead of new arrays; returns the parameters (temperature, top_p, top_k, u)."""
        nb, n = self.token_ban.size, self._n_seen
        ids[:nb + n] = self._ids[:nb + n]
        if nb:
            sub[:nb] = np.inf
        if n:  # the fp64 amounts _adjust subtracts, to fp32
            sub[nb:nb + n] = self._penalties()
        return self.temperature, self.top_p, self.top_k, self.rng.random()

    def _support(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the token ids :meth:`probs` gives a probability > 0, increasing; those probabilities).

        Bit for bit the full-sort computation (softmax, ``argsort``, ``cumsum``, softmax of
        ``z / T`` over the kept tokens), without sorting the vocabulary: the filters only look at
        the most probable tokens, which are found by a threshold (see :func:`_kept`)."""
        flat = np.reshape(logits, -1)
        z, e, zeros = self._scratch(flat.size)
        z[:] = flat
        z = self._adjust(z)
        zmax = z.max()
        if not np.isfinite(zmax):  # NaN, -inf everywhere or a +inf: check as the full computation did
            if not np.isfinite(z).any():
                raise SamplerError(NOTHING_TO_SAMPLE)
            if np.isnan(z).any():
                raise SamplerError(NAN_LOGITS)
        if self.temperature == 0:
            return np.array([int(np.argmax(z))]), np.ones(1)
        if zmax == np.inf:
            raise SamplerError(INF_LOGITS)
        top_k = self.top_k if 0 < self.top_k < z.size else 0
        if self.top_p >= 1 and not top_k:  # every token kept: softmax(z / T)
            np.divide(z, self.temperature, out=e)
            np.exp(np.subtract(e, e.max(), out=e), out=e)
            e /= e.sum()
            if e.all():  # (the work vector itself: sample and probs use it before the next call)
                return self._all_ids(e.size), e
            ids = np.flatnonzero(e)
            return ids, e[ids]
        np.exp(np.subtract(z, zmax, out=e), out=e)  # softmax(z) = e / e.sum()
        ids = _kept(e, e.sum(), self.top_p, top_k)
        if ids.size == 1:  # exp(0) / exp(0)
            return ids, np.ones(1)
        # ChatRWKV: probs ** (1 / T) after filtering == softmax(z / T) over the kept tokens; the sum
        # is taken over a (V,) vector with zeros elsewhere, as numpy's pairwise sum of the full
        # computation groups it
        q = z[ids]
        if self.temperature != 1:
            q /= self.temperature
        np.exp(np.subtract(q, q.max(), out=q), out=q)
        zeros[ids] = q
        q /= zeros.sum()
        zeros[ids] = 0.0
        if q.all():
            return ids, q
        nonzero = q > 0  # underflow
        return ids[nonzero], q[nonzero]

    def accept(self, token: int) -> None:
        """Record a generated token: decay all counts, then count it (ChatRWKV's order)."""
        token, n = int(token), self._n_seen
        self._counts[:n] *= self.penalty_decay
        weight = 0.0 if token in self.uncounted_ids else 1.0
        slot = self._slot.get(token)
        if slot is not None:
            self._counts[slot] += weight
            return
        if n == self._counts.size:
            self._counts, self._penalty = np.resize(self._counts, 2 * n), np.resize(self._penalty, 2 * n)
            self._ids = np.resize(self._ids, self.token_ban.size + 2 * n)
        self._ids[self.token_ban.size + n], self._counts[n], self._slot[token] = token, weight, n
        self._n_seen = n + 1

    def is_stop_token(self, token: int) -> bool:
        return token in self.token_stop


# Candidate thresholds for the filters, as fractions of the softmax: at most 1/t tokens reach t.
_RUNGS = (2.0 ** -12, 2.0 ** -16, 2.0 ** -20, 0.0)


def _kept(e: np.ndarray, total: float, top_p: float, top_k: int) -> np.ndarray:
    """Ids (increasing) that ChatRWKV's top-p (``probs[probs < cutoff] = 0``, ties kept) and
    top-k (the k most probable, first ids first among ties) keep of the softmax ``e / total``.

    The full computation sorts all of ``p = e / total``. Only its head matters: the cutoff is
    where the cumulative sum of the sorted values reaches top_p, and the k-th value. Tokens with
    ``e >= t * total`` (a rung of ``_RUNGS``) hold every value above all the others' (division is
    monotonic), so the sorted candidates are the head of the full sort, their cumulative sum is
    its first terms (``cumsum`` adds in order) and both values come out the same, as long as each
    lies strictly above the smallest candidate (no token left out can tie with it); else the next
    rung is tried, down to every token."""
    for rung in _RUNGS:
        ids = np.flatnonzero(e >= rung * total) if rung else np.arange(e.size)
        if ids.size == 0:
            continue
        p = e[ids]
        p /= total
        desc = np.sort(p)[::-1]
        floor = desc[-1] if rung else -np.inf  # a value equal to it may recur outside the rung
        keep = None
        if top_p < 1:
            cutoff = desc[min(int(np.searchsorted(np.cumsum(desc), top_p)), desc.size - 1)]
            if cutoff <= floor:
                continue
            keep = p >= cutoff
        if top_k:
            if top_k >= desc.size or desc[top_k - 1] <= floor:
                continue
            kth = desc[top_k - 1]
            ranked = p > kth
            ties = np.flatnonzero(p == kth)
            ranked[ties[:top_k - int(ranked.sum())]] = True
            keep = ranked if keep is None else keep & ranked
        return ids[keep]
    raise AssertionError("the last rung holds every token")


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
