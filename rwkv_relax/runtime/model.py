"""A compiled RWKV library plus its weights, driven through TVM's runtime RNNState.

Every call that takes a :class:`State` leaves it untouched: a one-token step advances the runtime
sequence in place and keeps the old State in its rollback history (``sequences.py``); anything
longer forks the sequence (a device-side copy of its slot) and advances the fork. Sequences are
released when their last ``State`` is garbage-collected.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import weakref
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import tvm
from tvm import relax
from tvm.runtime import ShapeTuple

from .. import tensor_cache
from ..errors import RWKVRelaxError
from ..loaders import open_checkpoint, time_state
from ..registry import get_spec
from ..weights import check_matches, library_params, open_weights
from .sampler import KERNEL_ERRORS, Sampler, SamplerError
from .sequences import RuntimeSequence, State, successor
from .threads import use_all_cpus

_DEVICES = {"cpu": tvm.cpu, "cuda": tvm.cuda, "metal": tvm.metal, "vulkan": tvm.vulkan,
            "opencl": tvm.opencl}


@functools.cache
def _builtin(name: str):
    return tvm.get_global_func(f"vm.builtin.{name}")


class CompiledModel:
    """See :func:`load_model`."""

    def __init__(self, lib_path: str | Path, weights: str | Path, device: str = "cpu",
                 max_sequences: int = 64, max_history: int = 4):
        if device not in _DEVICES:
            raise RWKVRelaxError(f"unknown device '{device}'; valid: {', '.join(_DEVICES)}")
        lib_path = Path(lib_path)
        if not lib_path.is_file():
            raise RWKVRelaxError(f"model library {lib_path} does not exist; build it with "
                                 "python -m rwkv_relax.build")
        self.device = _DEVICES[device](0)
        if device == "cpu":
            use_all_cpus()
        self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib_path)), self.device)
        self.metadata = json.loads(str(self.vm["_metadata"]()))
        self.vocab_size = int(self.metadata["vocab_size"])
        self.n_layer = int(self.metadata["num_hidden_layers"])
        self.chunk = int(self.metadata.get("prefill_chunk_size", 512))
        self.state_names = [s["name"] for s in self.metadata["state"]]
        # md5s of the tensor cache's shards when loaded from one (identifies the weights cheaply)
        self.weights_fingerprint: str | None = None
        params, tuned = self._load_weights(weights)
        # one ffi Array, built once: a Python list would be converted on every call (~10 us per
        # call for a few hundred tensors; a 0.1B q4 decode step takes ~5 ms)
        self.params = tvm.runtime.convert(params)
        self._rnn = self.vm["create_rnn_state"](ShapeTuple([max_sequences]), ShapeTuple([max_history]))
        self.max_history = max_history
        self._ids = itertools.count()
        self._seqs: weakref.WeakValueDictionary[int, RuntimeSequence] = weakref.WeakValueDictionary()
        # where new sequences start: zeros, or the checkpoint's state tuning; assign a State (e.g.
        # runtime.time_state.load_time_state(...)) to start from another one, None for zeros
        self.initial_state: State | None = None if tuned is None else self.load_state(tuned, partial=True)
        self._fns: dict = {}
        # the single-token input, written through a numpy view (tvm.runtime.tensor() costs ~25 us)
        # (token 0 until the first write: embed gathers the row it names, and an uninitialised id
        # read out of bounds)
        self._one_id = tvm.runtime.tensor(np.zeros(1, np.int32), self.device)
        self._one_id_view = np.from_dlpack(self._one_id) if device == "cpu" else None
        self._kernel_args: tuple | None = None  # the sampling kernel's inputs: see _adjustments
        self._kernel_views: tuple = ()
        # adjustment entries in use, and the (row, start, size) of each sampler's at the last draw
        self._adjusted, self._layout = 0, None
        self._params_tensors: dict[int, object] = {}
        self._params_views: dict[int, np.ndarray] = {}

    # ---- weights ------------------------------------------------------------------------
    def _load_weights(self, weights: str | Path) -> tuple[list, dict | None]:
        """(the library's parameters, the state tuning's WKV matrices or None) from ``weights``."""
        md = self.metadata
        if callable(weights):  # (params list, device) -> tensors: e.g. random weights made on the device
            return list(weights(md["params"], self.device)), None
        if tensor_cache.is_tensor_cache(weights):
            index = tensor_cache.read_index(weights)
            stored = index["metadata"]
            for key in ("model_type", "quantization"):
                if stored.get(key) != md[key]:
                    raise RWKVRelaxError(f"params in {weights} are {key}={stored.get(key)}, the library "
                                         f"is {key}={md[key]}; convert or build to match")
            # caches written before the layout existed are dense
            have, want = (m.get("model_config", {}).get("ffn_value_layout", "dense") for m in (stored, md))
            if have != want:
                raise RWKVRelaxError(f"params in {weights} store the channel-mix value {have}, the library "
                                     f"reads it {want}; re-run convert_weight (or build with "
                                     f"--overrides '{{\"ffn_value_layout\": \"{have}\"}}')")
            params = tensor_cache.load(weights, md["params"], self.device)
            self.weights_fingerprint = hashlib.sha256(
                "".join(r.get("md5sum", "") for r in index["records"]).encode()).hexdigest()[:16]
            tuning = Path(weights) / time_state.CACHE_FILE  # convert_weight kept a checkpoint's
            if not tuning.is_file():
                return params, None
            return params, time_state.collect(tuning, open_checkpoint(tuning).items(), self.n_layer)
        found = open_weights(weights)
        check_matches(found, md["model_type"], md["model_config"])
        # numerics (rescale_every, eps...) as compiled, tensors from the checkpoint
        built = get_spec(md["model_type"]).config_cls.from_dict(md["model_config"])
        params = [tvm.runtime.tensor(array, self.device)
                  for _, array in library_params(found, built, md["params"], md["quantization"])]
        return params, found.initial_state()

    # ---- sequences ----------------------------------------------------------------------
    def _new_sequence(self, parent: State | None) -> RuntimeSequence:
        """A fresh sequence (zeros), or a copy holding ``parent``'s content."""
        seq_id = next(self._ids)
        try:
            if parent is None:
                _builtin("kv_state_add_sequence")(self._rnn, seq_id)
            else:
                _builtin("kv_state_fork_sequence")(self._rnn, parent._seq.id, seq_id, -1)
        except Exception as err:  # the runtime says "slot is full"
            raise RWKVRelaxError(f"no free sequence slot ({str(err).splitlines()[0][:120]}); "
                                 "drop unused State objects or raise max_sequences") from None
        seq = self._seqs[seq_id] = RuntimeSequence(self, seq_id, 0 if parent is None else parent._seq.history)
        if parent is not None and parent.depth:  # left behind: step the copy back to it
            _builtin("kv_state_popn")(self._rnn, seq_id, parent.depth)
            seq.history -= parent.depth
        return seq

    def _release(self, seq_id: int) -> None:
        try:
            _builtin("kv_state_remove_sequence")(self._rnn, seq_id)
        except Exception:  # interpreter shutdown: the runtime may already be gone
            pass

    def read_state(self, state: State, layer: int, name: str) -> np.ndarray:
        idx = self.state_names.index(name)
        return _builtin("rnn_state_debug_get")(self._rnn, layer, idx, state.seq_id).numpy()

    def state_tensors(self, state: State) -> dict[tuple[int, str], np.ndarray]:
        """Every state entry of every layer, ``{(layer, name): array}`` (copies)."""
        return {(i, name): self.read_state(state, i, name)
                for i in range(self.n_layer) for name in self.state_names}

    def load_state(self, tensors: Mapping[tuple[int, str], np.ndarray], length: int = 0,
                   partial: bool = False) -> State:
        """A new sequence holding ``tensors`` (``{(layer, name): array}``, every entry of every
        layer, shapes and dtypes as in ``metadata["state"]``); ``length`` is its token count.
        ``partial``: entries not given are zeros (a state tuning gives only the WKV matrices).

        Written through the runtime's own ``rnn_state_set`` inside a begin/end-forward pair, as a
        forward would: the set kernel writes the *next* history entry and ``end_forward`` moves to
        it. The declared append length is 2 (not 1) so that the runtime keeps no rollback history:
        the entry behind a loaded state is the fresh initial state, which ``popn`` must not reach.
        """
        specs = {s["name"]: (tuple(s["shape"]), s["dtype"]) for s in self.metadata["state"]}
        want = {(i, n) for i in range(self.n_layer) for n in self.state_names}
        if partial:
            tensors = {**{key: np.zeros(specs[key[1]][0], specs[key[1]][1]) for key in want}, **tensors}
        if set(tensors) != want:
            missing = sorted(want - set(tensors))
            extra = sorted(set(tensors) - want)
            raise RWKVRelaxError(f"state tensors do not match this model: missing {missing[:3]}, "
                                 f"unexpected {extra[:3]}")
        arrays = {}
        for (layer, name), value in tensors.items():
            shape, dtype = specs[name]
            value = np.asarray(value)
            if value.shape != shape or str(value.dtype) != dtype:
                raise RWKVRelaxError(f"state '{name}' of layer {layer} is {value.dtype}{list(value.shape)}, "
                                     f"this model's is {dtype}{list(shape)}")
            # (1, *shape): the set kernel takes a batch of one
            arrays[layer, name] = tvm.runtime.tensor(np.ascontiguousarray(value)[None], self.device)
        state = State(self, self._new_sequence(None), 0)
        _builtin("kv_state_begin_forward")(self._rnn, ShapeTuple([state.seq_id]), ShapeTuple([2]))
        for (layer, name), value in arrays.items():
            _builtin("rnn_state_set")(self._rnn, layer, self.state_names.index(name), value)
        _builtin("kv_state_end_forward")(self._rnn)
        state.length = int(length)
        return state

    # ---- forward ------------------------------------------------------------------------
    def _tokens(self, tokens: Sequence[int]) -> np.ndarray:
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise RWKVRelaxError("empty token list; give at least one token")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise RWKVRelaxError(f"token id {int(ids.max() if ids.max() >= self.vocab_size else ids.min())} "
                                 f"is outside the vocabulary [0, {self.vocab_size})")
        return ids.astype(np.int32)

    def _host(self, tensor) -> np.ndarray:
        """A function's output as numpy. On the CPU, the tensor itself through DLPack, no copy: the
        VM allocates each call's outputs anew and the array keeps its tensor alive (copying the
        256 KiB of a 65536-token vocabulary's logits into a fresh array costs ~35 us a step)."""
        return np.from_dlpack(tensor) if self._one_id_view is not None else tensor.numpy()

    def _fn(self, name: str):
        """A library function, about to run on this thread: on the CPU the thread's own TVM pool
        is sized first (see threads.py; the server calls from its engine-loop thread)."""
        if self._one_id_view is not None:
            use_all_cpus()
        if name not in self._fns:
            self._fns[name] = self.vm[name]
        return self._fns[name]

    def _run(self, fn: str, seq_ids: list[int], lengths: list[int], *args):
        seqs = [self._seqs[i] for i in seq_ids]
        for seq, n in zip(seqs, lengths):
            seq.before_forward(n)
        _builtin("kv_state_begin_forward")(self._rnn, ShapeTuple(seq_ids), ShapeTuple(lengths))
        logits, self._rnn = self._fn(fn)(*args, self._rnn, self.params)
        _builtin("kv_state_end_forward")(self._rnn)
        for seq, n in zip(seqs, lengths):
            seq.after_forward(n)
        return logits

    def _embed(self, ids: np.ndarray):
        if ids.size == 1 and self._one_id_view is not None:
            self._one_id_view[0] = ids[0]
            return self._fn("embed")(self._one_id, self.params)
        return self._fn("embed")(tvm.runtime.tensor(ids, self.device), self.params)

    def advance(self, state: State, tokens: Sequence[int]) -> np.ndarray:
        """Feed ``tokens`` into ``state`` IN PLACE (no fork); returns the last token's logits."""
        return self._host(self.advance_raw(state, tokens)).reshape(-1)

    def advance_raw(self, state: State, tokens: Sequence[int]):
        """:meth:`advance`, returning the last token's logits as the library's tensor (for
        :meth:`sample`, which can draw from it where it is)."""
        ids = self._tokens(tokens)
        logits = None
        for start in range(0, ids.size, self.chunk):
            chunk = ids[start:start + self.chunk]
            emb = self._embed(chunk)
            fn = "decode" if chunk.size == 1 else "prefill"
            logits = self._run(fn, [state.seq_id], [int(chunk.size)], emb._create_view((1, *emb.shape)))
        state.length += int(ids.size)
        return logits

    # ---- sampling -----------------------------------------------------------------------
    @property
    def has_sampler(self) -> bool:
        """The library carries ``sample_logits`` (``tir_kernels/sampling.py``; llvm builds)."""
        return self.metadata.get("sampler") == "sample_logits"

    def sample(self, logits, sampler: Sampler) -> int:
        """The next token drawn by ``sampler`` (not recorded: see ``Sampler.accept``) from one row
        of logits as :meth:`advance_raw` returns them, which it CONSUMES: see :meth:`sample_rows`.
        Raises ``SamplerError`` as ``sampler.sample`` would."""
        token = self.sample_rows(logits, [sampler])[0]
        if isinstance(token, Exception):
            raise token
        return token

    def sample_rows(self, logits, samplers: Sequence[Sampler | None]) -> list:
        """Row i of ``logits`` (a function's output: (1, B, V) or (B, 1, V), as
        :meth:`advance_batch_raw` returns them) drawn by ``samplers[i]`` (None: not drawn); a
        token id or the ``SamplerError`` that ``Sampler.sample`` would raise, per row. The logits
        are CONSUMED. Where the library carries the sampling kernel (llvm) every row is drawn in
        one call to it, in place in the logits, which never reach numpy; libraries without it
        draw each row with ``Sampler.sample``."""
        out: list = [None] * len(samplers)
        if not self.has_sampler or self._one_id_view is None:
            rows = self.rows(logits, len(samplers))
            for i, sampler in enumerate(samplers):
                if sampler is not None:
                    try:
                        out[i] = sampler.sample(rows[i])
                    except SamplerError as err:
                        out[i] = err
            return out
        kernel_rows = [i for i, s in enumerate(samplers) if s is not None]
        sizes = [samplers[i].n_adjusted for i in kernel_rows]
        n = sum(sizes)
        adj_row, adj_id, adj_sub = self._adjustments(n)
        params = self._params(len(samplers))
        if len(kernel_rows) < len(samplers):
            params[:] = (0.0, 1.0, 0.0, 0.0)  # rows not drawn: greedy, the cheapest
        # each sampler writes its adjustments straight into the kernel's tensors; their rows are
        # rewritten only where the layout moved (a generation's one sampler: when it sees a new
        # token). Every numpy call here costs several us right after a decode step
        layout, at = [], 0
        for i, size in zip(kernel_rows, sizes):
            params[i] = samplers[i].write_kernel_args(adj_id[at:], adj_sub[at:])
            layout.append((i, at, size))
            at += size
        if layout != self._layout:
            for i, start, size in layout:
                adj_row[start:start + size] = i
            adj_row[n:self._adjusted] = -1  # entries left from a longer list
            self._adjusted, self._layout = n, layout
        tokens = np.from_dlpack(self._fn("sample_logits")(logits, *self._kernel_args,
                                                          self._params_tensors[len(samplers)]))
        for i in kernel_rows:
            token = int(tokens[i])
            out[i] = SamplerError(KERNEL_ERRORS[token]) if token < 0 else token
        return out

    def _adjustments(self, n: int) -> tuple[np.ndarray, ...]:
        """numpy views of the kernel's (row, id, amount) adjustment tensors, regrown to hold
        ``n`` (rows of unused entries are -1: the kernel skips them, so the tensors are passed
        whole and never re-wrapped per call: tvm.runtime.tensor() costs ~25 us)."""
        if self._kernel_args is None or self._kernel_args[0].shape[0] < n:
            size = max(64, 2 * n)
            self._kernel_args = (tvm.runtime.tensor(np.full(size, -1, np.int32), self.device),
                                 tvm.runtime.tensor(np.zeros(size, np.int32), self.device),
                                 tvm.runtime.tensor(np.zeros(size, np.float32), self.device))
            self._kernel_views = tuple(np.from_dlpack(t) for t in self._kernel_args)
            self._adjusted, self._layout = 0, None
        return self._kernel_views

    def _params(self, rows: int) -> np.ndarray:
        """A numpy view of the kernel's (rows, 4) parameter tensor, one kept per row count."""
        if rows not in self._params_tensors:
            self._params_tensors[rows] = tvm.runtime.tensor(np.zeros((rows, 4), np.float32), self.device)
            self._params_views[rows] = np.from_dlpack(self._params_tensors[rows])
        return self._params_views[rows]

    def new_state(self) -> State:
        """A fresh sequence: all zeros, or ``initial_state`` (a state-tuned checkpoint's) when set."""
        if self.initial_state is not None:
            return State(self, self._new_sequence(self.initial_state), 0)
        return State(self, self._new_sequence(None), 0)

    def fork(self, state: State) -> State:
        return State(self, self._new_sequence(state), state.length)

    def prefill(self, tokens: Sequence[int], state: State | None = None) -> tuple[np.ndarray, State]:
        """Run ``tokens`` (in chunks of prefill_chunk_size) after ``state`` (None: fresh).
        Returns the last position's logits (V,) float32 and the new state."""
        ids = self._tokens(tokens)
        if state is None:
            new = self.new_state()
        else:
            new = successor(state, set()) if ids.size == 1 else self.fork(state)
        return self.advance(new, ids), new

    def decode(self, token: int, state: State) -> tuple[np.ndarray, State]:
        """One token after ``state``."""
        return self.prefill([int(token)], state)

    def batch_prefill(self, token_lists: Sequence[Sequence[int]],
                      states: Sequence[State | None]) -> tuple[np.ndarray, list[State]]:
        """Several sequences in one packed forward; returns (B, V) logits and new states."""
        ids = [self._tokens(t) for t in token_lists]
        new = [self.new_state() if s is None else self.fork(s) for s in states]
        return self._packed("batch_prefill", new, ids), new

    def batch_decode(self, tokens: Sequence[int], states: Sequence[State]) -> tuple[np.ndarray, list[State]]:
        """One token for each of several sequences; returns (B, V) logits and new states."""
        ids = self._tokens(tokens)
        taken: set = set()
        new = [successor(s, taken) for s in states]
        return self._packed("batch_decode", new, [ids[i:i + 1] for i in range(ids.size)]), new

    def _packed(self, fn: str, states: Sequence[State], ids: Sequence[np.ndarray], raw: bool = False):
        """``ids[i]`` into ``states[i]`` IN PLACE, all in one packed forward of ``fn``
        ("batch_decode": one token each; "batch_prefill"); each sequence's last logits, (B, V)
        (``raw``: as the function returned them)."""
        packed = np.concatenate(ids)
        emb = self._embed(packed)
        seq_ids, lengths = [s.seq_id for s in states], [int(i.size) for i in ids]
        if fn == "batch_decode":  # (B, C) -> (B, 1, C), no copy
            logits = self._run(fn, seq_ids, lengths, emb._create_view((len(ids), 1, emb.shape[1])))
        else:  # (T, C) -> (1, T, C), with each sequence's last position
            last = tvm.runtime.tensor(np.cumsum(lengths).astype(np.int32) - 1, self.device)
            logits = self._run(fn, seq_ids, lengths, emb._create_view((1, *emb.shape)), last)
        for s, n in zip(states, lengths):
            s.length += n
        return logits if raw else self.rows(logits, len(ids))

    def rollback(self, state: State, n: int) -> State:
        """The state ``n`` decode steps earlier (runtime ``popn``; decode steps only, at most
        ``max_history - 1``)."""
        new = self.fork(state)
        try:
            _builtin("kv_state_popn")(self._rnn, new.seq_id, int(n))
        except Exception as err:
            raise RWKVRelaxError(f"cannot roll back {n} tokens: {str(err).splitlines()[0][:160]}") from None
        new._seq.history -= int(n)
        new.length -= n
        return new

    # ---- in-place batches (the server's engine loop, rwkv_relax/serve/scheduler.py) -------------
    def advance_batch(self, states: Sequence[State], token_lists: Sequence[Sequence[int]]) -> np.ndarray:
        """Feed ``token_lists[i]`` into ``states[i]`` IN PLACE, all in one packed forward (no fork,
        unlike batch_prefill / batch_decode); returns each sequence's last logits, (B, V).

        One token each runs the ``batch_decode`` kernel, anything else ``batch_prefill``; both
        compute every row alone, so a sequence's logits and state do not depend on its batch
        neighbours nor on how its tokens were split into calls (bit-identical on llvm)."""
        return self.rows(self.advance_batch_raw(states, token_lists), len(states))

    def advance_batch_raw(self, states: Sequence[State], token_lists: Sequence[Sequence[int]]):
        """:meth:`advance_batch`, returning the logits as the function returned them (for
        :meth:`sample_rows`; :meth:`rows` views them as (B, V) numpy on the CPU)."""
        ids = [self._tokens(t) for t in token_lists]
        if len(ids) != len(states) or not ids:
            raise RWKVRelaxError(f"advance_batch takes one token list per state, got {len(ids)} for {len(states)}")
        return self._packed("batch_decode" if all(i.size == 1 for i in ids) else "batch_prefill", states, ids,
                            raw=True)

    def rows(self, logits, n: int) -> np.ndarray:
        """A function's logits as (n, V) numpy (on the CPU a view: what the sampling kernel
        consumes changes under it)."""
        return self._host(logits).reshape(n, -1)


def load_model(lib_path: str | Path, weights: str | Path, device: str = "cpu", **kwargs) -> CompiledModel:
    """Load a compiled library and a checkpoint's weights."""
    return CompiledModel(lib_path, weights, device, **kwargs)
