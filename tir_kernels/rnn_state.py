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

Two forms (the ``target`` argument of :func:`state_copy`):
  "cpu"  for llvm: parallel over (sequence, leading state dim), each task one contiguous run.
         A WKV state (H, N, N) is 196 KB per layer at 0.1B and comes from DRAM on every decode
         step (the weights streamed since evict it). The serial copy took ~20 us and left the
         whole state in one core's cache, from which the WKV kernel's tasks on the other core
         then had to pull it. Split per head, the copy lands where the WKV kernel reads it,
         because that kernel is parallel over heads in the same order. In isolation, get + WKV
         + set went from 49 to 28 us per layer. A q4f16_1 decode step of RWKV-5 0.1B got 4%
         faster (interleaved A/B, paired median).
  "gpu"  the same copy as one unscheduled block, for dlight's fallback rule.
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


STATE_COPY_TARGETS = ("cpu", "gpu")


def state_copy(shape: Sequence[int], dtype: str, direction: str, target: str = "cpu") -> tirx.PrimFunc:
    """The get (``direction="get"``) or set (``"set"``) kernel for one state of ``shape``.

    The state is walked as flat runs so that a single kernel body serves states of any rank
    (``(C,)`` token-shift rows and ``(H, N, N)`` WKV matrices alike).
    """
    if direction not in ("get", "set"):
        raise ValueError(f"direction must be 'get' or 'set', not {direction!r}")
    shape = [int(s) for s in shape]
    if target == "cpu":
        return _state_copy_cpu(shape, dtype, direction)
    if target != "gpu":
        raise ValueError(f"unknown state_copy target {target!r}; choose one of {STATE_COPY_TARGETS}")
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


def _state_copy_cpu(shape: list[int], dtype: str, direction: str) -> tirx.PrimFunc:
    size = int(np.prod(shape))
    # a rank-1 state (a token-shift row, a few KB) is one serial run per sequence (a parallel
    # launch would cost more than the copy); larger ones one task per row of their leading dim
    rows = shape[0] if len(shape) > 1 else 1
    run = size // rows
    is_set = direction == "set"

    @T.prim_func(private=True)
    def copy(var_storage: T.handle, var_seq: T.handle, var_hist: T.handle, var_data: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        max_seqs, max_history = T.int64(), T.int64()
        batch = T.int64()
        storage = T.match_buffer(var_storage, (max_seqs, max_history, *shape), dtype)
        seq = T.match_buffer(var_seq, (batch,), "int32")
        hist = T.match_buffer(var_hist, (batch,), "int32")
        data = T.match_buffer(var_data, (batch, *shape), dtype)
        # flat views of the same memory: one contiguous run per task, whatever the rank
        flat_storage = T.decl_buffer((max_seqs * max_history * size,), dtype, data=storage.data)
        flat_data = T.decl_buffer((batch * size,), dtype, data=data.data)
        for task in (T.parallel(batch * rows) if rows > 1 else T.serial(batch)):
            # get reads the current history entry, set writes the next one (see the module doc)
            entry = hist[task // rows] + 1 if is_set else hist[task // rows]
            start = ((T.Cast("int64", seq[task // rows]) * max_history
                      + T.Cast("int64", entry % T.Cast("int32", max_history))) * size + task % rows * run)
            for e in range(run):
                if is_set:
                    flat_storage[start + e] = flat_data[task * run + e]
                else:
                    flat_data[task * run + e] = flat_storage[start + e]

    return copy


def state_get_numpy(storage: np.ndarray, seq: np.ndarray, hist: np.ndarray) -> np.ndarray:
    """Twin of the get kernel."""
    return storage[seq, hist].copy()


def state_set_numpy(storage: np.ndarray, seq: np.ndarray, hist: np.ndarray, data: np.ndarray) -> None:
    """Twin of the set kernel (writes ``storage`` in place, like the runtime)."""
    storage[seq, (hist + 1) % storage.shape[1]] = data
