"""States and the runtime sequences behind them.

A :class:`State` is immutable from the caller's side: ``model.decode(token, state)`` returns a new
State and the one passed in keeps its content. Copying a sequence's slot for every step (the
runtime's ``fork``, every layer's state times ``max_history``: ~9 MiB a step on 12 x 768) is what
the functional API used to cost over the in-place ``advance``. Instead, a one-token step advances
the runtime sequence in place and leaves the old State *behind* on it: the runtime keeps the
previous ``max_history - 1`` single-token steps of a sequence for rollback, and a State left
behind names one of them. It is copied out into a sequence of its own (fork + ``popn``) only if
it is used again, or just before the history would lose it. In a loop that rebinds its state
(``logits, state = model.decode(token, state)``) the old State is gone before the next step,
and nothing is ever copied.
"""
from __future__ import annotations

import weakref

import numpy as np


class RuntimeSequence:
    """One runtime sequence, removed from the RNNState when the last State on it is collected.

    ``forwards`` counts the forward calls run on it, ``history`` mirrors the runtime's count of
    steps it can still roll back (``available_history_num`` in TVM's ``rnn_state.cc``)."""

    def __init__(self, model, seq_id: int, history: int = 0):  # model: the CompiledModel
        self.model, self.id, self.history = model, seq_id, history
        self.forwards = 0
        self.behind: weakref.WeakSet[State] = weakref.WeakSet()

    def __del__(self):
        model = getattr(self, "model", None)
        if model is not None and getattr(model, "_rnn", None) is not None:
            model._release(self.id)

    def _history_after(self, n_tokens: int) -> int:
        """``history`` after a forward of ``n_tokens`` (the runtime's ``EndForward``: a prefill
        cannot be rolled back)."""
        return min(self.history + 1, self.model.max_history - 1) if n_tokens == 1 else 0

    def before_forward(self, n_tokens: int) -> None:
        """Copy out the States left behind that a forward of ``n_tokens`` would push out of the
        history."""
        if self.behind:
            kept = self._history_after(n_tokens)
            for state in [s for s in self.behind if s.depth + 1 > kept]:
                own_sequence(state)

    def after_forward(self, n_tokens: int) -> None:
        self.history = self._history_after(n_tokens)
        self.forwards += 1


class State:
    """One sequence's recurrent state (all layers), held by the runtime RNNState."""

    def __init__(self, model, seq: RuntimeSequence, length: int):  # model: the CompiledModel
        self._model, self._seq, self.length = model, seq, length
        self._at: int | None = None  # None: the sequence's current content; else its content
        # after that many forwards, still in the runtime's rollback history (left behind)

    @property
    def depth(self) -> int:
        """Forwards run on the sequence since this State's content (0: it is the current one)."""
        return 0 if self._at is None else self._seq.forwards - self._at

    @property
    def seq_id(self) -> int:
        """The runtime sequence holding exactly this State (one is copied out if it was left behind)."""
        if self._at is not None:
            own_sequence(self)
        return self._seq.id

    def layer(self, layer: int, name: str) -> np.ndarray:
        """This sequence's state tensor ``name`` of ``layer`` (a copy)."""
        return self._model.read_state(self, layer, name)


def own_sequence(state: State) -> None:
    """Copy a State left behind out into a sequence of its own."""
    seq, state._seq = state._seq, state._model._new_sequence(state)
    state._at = None
    seq.behind.discard(state)


def successor(state: State, taken: set) -> State:
    """The State one token after ``state``, leaving ``state`` as it is: on the same sequence,
    ``state`` left behind in its history, when it can be; else on a fork. ``taken``: sequences
    already stepped in this forward (a batch may hold one State twice)."""
    model, seq = state._model, state._seq
    if model.max_history < 2 or state._at is not None or seq in taken:
        return model.fork(state)
    taken.add(seq)
    state._at = seq.forwards
    seq.behind.add(state)
    return State(model, seq, state.length)
