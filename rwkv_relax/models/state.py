"""The runtime-managed recurrent state (TVM's ``RNNState``, as MLC-LLM's RNN models use it), the
per-layer list of named state entries, and a layer's view of the state during one forward."""
from __future__ import annotations

import dataclasses
from typing import Sequence

from tvm import relax as rx
from tvm import tirx
from tvm.relax.frontend.nn import Object, Tensor, op

from . import ops
from .layers import Segments, last_tokens, token_shift


@dataclasses.dataclass(frozen=True)
class StateEntry:
    """One named state tensor of every layer: its shape per sequence, dtype and initial value."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    init: float = 0.0


class StateSpec:
    """The per-layer state list of a model, in the order the runtime stores it."""

    def __init__(self, entries: Sequence[StateEntry]):
        self.entries = list(entries)
        self._index = {e.name: i for i, e in enumerate(self.entries)}

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def index(self, name: str) -> int:
        return self._index[name]

    def entry(self, name: str) -> StateEntry:
        return self.entries[self._index[name]]

    def init_values(self) -> list[Tensor]:
        # op.full takes the fill as a Python number (it makes the relax constant itself)
        return [op.full(e.shape, float(e.init), e.dtype) if e.init else op.zeros(e.shape, e.dtype)
                for e in self.entries]

    def to_json(self) -> list[dict]:
        return [{"name": e.name, "shape": list(e.shape), "dtype": e.dtype, "init": e.init}
                for e in self.entries]


class RNNState(Object):
    """Relax handle on the runtime ``RNNState`` object.

    Each layer owns the same list of states (shape, dtype); the runtime stores them per sequence
    slot and history entry, and gathers/scatters them through the kernels in
    ``tir_kernels/rnn_state.py``. ``get`` returns ``(B, *shape)`` for the batch that the caller
    declared with ``kv_state_begin_forward``.
    """

    @staticmethod
    def create(max_batch_size: tirx.PrimExpr, max_history: tirx.PrimExpr, n_layer: int,
               init_values: Sequence[Tensor]) -> "RNNState":
        bb = rx.BlockBuilder.current()
        infos = [([int(s) for s in v.shape], v.dtype) for v in init_values]
        f_gets = [bb.add_func(ops.state_copy(s, d, "get"), f"rnn_state_get_{i}") for i, (s, d) in enumerate(infos)]
        f_sets = [bb.add_func(ops.state_copy(s, d, "set"), f"rnn_state_set_{i}") for i, (s, d) in enumerate(infos)]
        return RNNState(
            _expr=rx.call_pure_packed(
                "vm.builtin.rnn_state_create", rx.prim_value(n_layer), max_batch_size, max_history,
                f_gets, f_sets, [v._expr for v in init_values],  # pylint: disable=protected-access
                ty_args=[rx.ObjectType()]),
            _name="rnn_state")

    def get(self, layer: int, state_id: int, shape: Sequence, dtype: str) -> Tensor:
        bb = rx.BlockBuilder.current()
        return Tensor(_expr=bb.emit(rx.call_dps_packed(
            "vm.builtin.rnn_state_get",
            [self._expr, rx.prim_value(layer), rx.prim_value(state_id)],
            out_ty=rx.TensorType(shape, dtype))))

    def set(self, layer: int, state_id: int, value: Tensor) -> "RNNState":
        return RNNState(
            _expr=rx.call_pure_packed(
                "vm.builtin.rnn_state_set", self._expr, rx.prim_value(layer), rx.prim_value(state_id),
                value._expr, ty_args=[rx.ObjectType()]),  # pylint: disable=protected-access
            _name="rnn_state_set")


class LayerState:
    """One layer's state during a forward: ``get`` reads an entry for the batch, ``put`` stages its
    new value, ``commit`` writes every staged value back (cast to the stored dtype)."""

    def __init__(self, state: RNNState, layer: int, spec: StateSpec, seg: Segments, dtype: str):
        self.state, self.layer, self.spec, self.seg, self.dtype = state, layer, spec, seg, dtype
        self.batch = 1 if seg.single else seg.seg_last.shape[0]
        self._new: dict[str, Tensor] = {}

    def get(self, name: str) -> Tensor:
        """Entry ``name`` of every sequence in the batch: (B, *shape), in its stored dtype."""
        e = self.spec.entry(name)
        return self.state.get(self.layer, self.spec.index(name), [self.batch, *e.shape], e.dtype)

    def put(self, name: str, value: Tensor) -> None:
        self._new[name] = value

    def shift(self, name: str, xx: Tensor) -> Tensor:
        """Token shift through entry ``name``: each token's predecessor (the carried row for a
        sequence's first token; rows are stored in the model dtype, used in the layer's), and the
        batch's last tokens staged as the new rows."""
        prev = self.get(name)
        if prev.dtype != self.dtype:
            prev = prev.astype(self.dtype)
        self.put(name, last_tokens(xx, self.seg))
        return token_shift(xx, prev, self.seg)

    def commit(self) -> RNNState:
        state = self.state
        for name, value in self._new.items():
            stored = self.spec.entry(name).dtype
            state = state.set(self.layer, self.spec.index(name),
                              value if value.dtype == stored else value.astype(stored))
        return state
