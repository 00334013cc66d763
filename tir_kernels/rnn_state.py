"""Gather/scatter kernels that TVM's runtime ``RNNState`` calls to read and write per-layer state.

The runtime keeps, for every layer and state id, one storage tensor of shape
``(max_seqs, max_history, *shape)``: a slot per live sequence and a ring of history entries per slot
(the ring is what makes ``popn`` rollback possible). Before each forward it hands these kernels the
batch's ``seq_slot_ids`` and ``history_slot_ids`` (both ``(B,)`` int32):

* get: ``out[b] = storage[seq[b], hist[b]]``;
* set: ``storage[seq[b], (hist[b] + 1) % max_history] = data[b]`` -- the write goes to the *next*
  history entry, because the runtime advances ``history_slot_id`` only in ``EndForward``; the entry
  just read stays intact, which is what ``popn`` rolls back to.

The signature ``f(storage, seq_slot_ids, history_slot_ids, data)`` is fixed by
``src/runtime/vm/rnn_state.cc``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from tvm import tirx
from tvm.script import tirx as T


def _index(shape: Sequence[int], flat):
    """Unflatten ``flat`` into indices for ``shape`` (row-major)."""
    idx = []
    for extent in reversed(shape):
        idx.append(flat % extent)
        flat = flat // extent
    return list(reversed(idx))


def state_copy(shape: Sequence[int], dtype: str, direction: str) -> tirx.PrimFunc:
    """The get (``direction="get"``) or set (``"set"``) kernel for one state of ``shape``.

    The state is walked as one flat axis so that a single kernel body serves states of any rank
    (``(C,)`` token-shift rows and ``(H, N, N)`` WKV matrices alike).
    """
    if direction not in ("get", "set"):
        raise ValueError(f"direction must be 'get' or 'set', not {direction!r}")
    shape = [int(s) for s in shape]
    size = int(np.prod(shape))
    is_set = direction == "set"

    @T.prim_func(private=True, s_tir=True)
    def copy(var_storage: T.handle, var_seq: T.handle, var_hist: T.handle, var_data: T.handle):
        T.func_attr({"tirx.noalias": True})
        max_seqs, max_history = T.int64(), T.int64()
        batch = T.int64()
        storage = T.match_buffer(var_storage, (max_seqs, max_history, *shape), dtype)
        seq = T.match_buffer(var_seq, (batch,), "int32")
        hist = T.match_buffer(var_hist, (batch,), "int32")
        data = T.match_buffer(var_data, (batch, *shape), dtype)
        for b, e in T.grid(batch, size):
            with T.sblock("copy"):
                vb, ve = T.axis.remap("SS", [b, e])
                if is_set:
                    T.buffer_store(
                        storage, T.BufferLoad(data, [vb, *_index(shape, ve)]),
                        [seq[vb], (hist[vb] + 1) % T.Cast("int32", max_history), *_index(shape, ve)])
                else:
                    T.buffer_store(
                        data, T.BufferLoad(storage, [seq[vb], hist[vb], *_index(shape, ve)]),
                        [vb, *_index(shape, ve)])

    return copy


def state_get_numpy(storage: np.ndarray, seq: np.ndarray, hist: np.ndarray) -> np.ndarray:
    """Twin of the get kernel."""
    return storage[seq, hist].copy()


def state_set_numpy(storage: np.ndarray, seq: np.ndarray, hist: np.ndarray, data: np.ndarray) -> None:
    """Twin of the set kernel (writes ``storage`` in place, like the runtime)."""
    storage[seq, (hist + 1) % storage.shape[1]] = data
