"""Finished sequences' RNN states, kept by the token prefix they represent (LRU, bounded in bytes).

An RNN's whole history is one fixed-size state, so resuming a conversation needs only the state
its last turn ended in: a request whose tokens extend a cached prefix starts from a copy of that
state and prefills the rest. Entries are host copies (``CompiledModel.state_tensors``), loaded back
with ``load_state``: bit-exact, and they take no runtime sequence slot, so the RNNState is sized
by the running requests alone. Used from the engine loop's thread only."""
from __future__ import annotations

import collections
import hashlib
from typing import Sequence

import numpy as np


def prefix_key(tokens: Sequence[int]) -> str:
    return hashlib.sha256(np.asarray(tokens, dtype=np.int32).tobytes()).hexdigest()


class StateCache:
    """At most ``capacity_bytes`` of states; ``lookup`` finds the longest cached prefix of a token
    list, ``put`` keeps a state (``{(layer, name): array}``) under the tokens it has consumed."""

    def __init__(self, capacity_bytes: int):
        self.capacity = max(int(capacity_bytes), 0)
        self.bytes = 0
        self._entries: collections.OrderedDict[str, tuple[tuple[int, ...], dict]] = collections.OrderedDict()
        self._lengths: collections.Counter[int] = collections.Counter()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, tokens: Sequence[int]):
        """``(n, state)``: the state of ``tokens[:n]`` for the longest cached prefix shorter than
        ``tokens`` (at least one token is left to prefill: it gives the next logits), or
        ``(0, None)``. The entry becomes the most recently used; its arrays are the cache's own
        (load them, do not change them)."""
        for n in sorted((n for n in self._lengths if n < len(tokens)), reverse=True):
            key = prefix_key(tokens[:n])
            entry = self._entries.get(key)
            if entry is not None and list(entry[0]) == list(tokens[:n]):
                self._entries.move_to_end(key)
                return n, entry[1]
        return 0, None

    def put(self, tokens: Sequence[int], state: dict) -> bool:
        """Keep ``state`` as the state of ``tokens``; evicts the least recently used entries to stay
        within capacity. False when it does not fit at all."""
        size = state_nbytes(state)
        if not tokens or size > self.capacity:
            return False
        key = prefix_key(tokens)
        if key in self._entries:
            self._drop(key)
        while self.bytes + size > self.capacity:
            self._drop(next(iter(self._entries)))
        self._entries[key] = (tuple(int(t) for t in tokens), state)
        self._lengths[len(tokens)] += 1
        self.bytes += size
        return True

    def _drop(self, key: str) -> None:
        tokens, state = self._entries.pop(key)
        self.bytes -= state_nbytes(state)
        self._lengths[len(tokens)] -= 1
        if not self._lengths[len(tokens)]:
            del self._lengths[len(tokens)]

    def clear(self) -> None:
        self._entries.clear()
        self._lengths.clear()
        self.bytes = 0


def state_nbytes(state: dict) -> int:
    return sum(a.nbytes for a in state.values())
