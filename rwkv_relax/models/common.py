"""What RWKV-4 and RWKV-5 share: packed-batch bookkeeping, token shift, channel mix, the linear
layer with fp32 accumulation, the runtime-managed RNN state, and the MLC-style exported interface.

Letters: B sequences in a batch, T tokens (packed back to back over all sequences), C channels,
F feed-forward width, V vocabulary.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from tvm import relax as rx
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Object, Tensor, op

from tir_kernels import kernel

from ..config import ConfigBase
from ..errors import ConfigError


# --------------------------------------------------------------------------------------------
# Packed batches
# --------------------------------------------------------------------------------------------
class Segments:
    """Where each sequence of a packed ``(T, C)`` activation ends.

    ``seg_last`` is ``(B,)`` int32, the inclusive index of each sequence's last token (MLC's
    ``logit_positions``). ``None`` means a single sequence (prefill/decode), for which the
    simpler single-sequence kernels are used.
    """

    def __init__(self, seg_last: Tensor | None = None):
        self.seg_last = seg_last

    @property
    def single(self) -> bool:
        return self.seg_last is None

    @staticmethod
    def one_token_each(batch: tirx.PrimExpr) -> "Segments":
        """Segments for batch decode: sequence b is token b."""
        def f(n):
            return te.compute((n,), lambda b: b.astype("int32"), name="arange")
        return Segments(op.tensor_expr_op(lambda: f(batch), "seg_one_token_each", []))


def token_shift(x: Tensor, prev: Tensor, seg: Segments) -> Tensor:
    """Each token's predecessor: ``x[t-1]``, or the sequence's carried row for its first token.

    x: (T, C), prev: (B, C) -> (T, C).
    """
    if seg.single:
        def f(x, prev):
            return te.compute(
                x.shape, lambda t, c: tirx.if_then_else(t == 0, prev[0, c], x[t - 1, c]),
                name="shift")
        return op.tensor_expr_op(f, "token_shift", [x, prev])

    def f_ragged(x, prev, seg_last):
        n_seq = seg_last.shape[0]
        b = te.reduce_axis((0, n_seq), name="b")
        # which sequence token t belongs to = number of sequences that ended before t
        owner = te.compute(
            (x.shape[0],),
            lambda t: te.sum(tirx.Select(seg_last[b].astype("int64") < t, 1, 0), axis=b),
            name="owner")

        def shifted(t, c):
            o = owner[t]
            # for o == 0 the lookup below hits seg_last[0] >= t, so only t == 0 is first
            first = tirx.Or(t == 0, seg_last[tirx.max(o - 1, 0)].astype("int64") == t - 1)
            return tirx.if_then_else(first, prev[o, c], x[tirx.max(t - 1, 0), c])
        return te.compute(x.shape, shifted, name="shift")
    return op.tensor_expr_op(f_ragged, "token_shift_ragged", [x, prev, seg.seg_last])


def last_tokens(x: Tensor, seg: Segments) -> Tensor:
    """The last row of each sequence. x: (T, C) -> (B, C)."""
    if seg.single:
        def f(x):
            return te.compute((1, x.shape[1]), lambda _, c: x[x.shape[0] - 1, c], name="last")
        return op.tensor_expr_op(f, "last_token", [x])
    return gather_rows(x, seg.seg_last, "last_tokens")


def gather_rows(table: Tensor, ids: Tensor, name: str) -> Tensor:
    """``table[ids]`` as a plain TE gather (op.take's legalization warns on every compile)."""
    def f(table, ids):
        return te.compute((ids.shape[0], table.shape[1]), lambda t, c: table[ids[t], c], name=name)
    return op.tensor_expr_op(f, name, [table, ids])


def mix(xx: Tensor, sx: Tensor, time_mix: Tensor) -> Tensor:
    """Token-shift interpolation, written as the reference writes it (``xx*m + sx*(1-m)``) so
    rounding matches ChatRWKV."""
    return xx * time_mix + sx * (1.0 - time_mix)


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------
class Linear(nn.Module):
    """``y = x @ W.T`` with W stored (out, in) as in every RWKV checkpoint.

    Accumulates in fp32 whatever the activation dtype: fp16 accumulation over a 2048-wide row
    loses ~3 significant digits and, in the r/k/v projections of small models, overflows.
    ``out_dtype`` is fp32 for r/k/v (the WKV runs in fp32), the activation dtype elsewhere.
    Quantization replaces this module wholesale (it is the only quantizable layer type).
    """

    def __init__(self, in_features: int, out_features: int, dtype: str, out_dtype: str | None = None,
                 role: str = ""):
        self.role = role  # "head" lets quantization keep the head unquantized on request
        self.in_features = in_features
        self.out_features = out_features
        self.dtype = dtype
        self.out_dtype = out_dtype or dtype
        self.weight = nn.Parameter((out_features, in_features), dtype)

    def forward(self, x: Tensor) -> Tensor:
        y = op.matmul(x, op.permute_dims(self.weight), out_dtype="float32")
        return y if self.out_dtype == "float32" else y.astype(self.out_dtype)


class LayerNorm(nn.Module):
    """LayerNorm computed in fp32 (an fp16 variance over 4096 channels overflows). Its weight and
    bias are stored in fp32 whatever the model dtype: casting them on every call cost each fp16
    decode step 2 kernels and their allocations per norm (~200 VM instructions at 12 layers)."""

    def __init__(self, n: int, dtype: str, eps: float):
        self.dtype, self.eps = dtype, eps
        self.weight = nn.Parameter((n,), "float32")
        self.bias = nn.Parameter((n,), "float32")

    def forward(self, x: Tensor) -> Tensor:
        if self.dtype == "float32":
            return op.layer_norm(x, x.shape[-1], self.weight, self.bias, eps=self.eps)
        y = op.layer_norm(x.astype("float32"), x.shape[-1], self.weight, self.bias, eps=self.eps)
        return y.astype(self.dtype)


class ChannelMix(nn.Module):
    """RWKV channel mix (identical in v4 and v5): ``sigmoid(R x_r) * V relu(K x_k)^2``."""

    def __init__(self, n_embd: int, dim_ffn: int, dtype: str):
        self.time_mix_k = nn.Parameter((n_embd,), dtype)
        self.time_mix_r = nn.Parameter((n_embd,), dtype)
        self.key = Linear(n_embd, dim_ffn, dtype)
        self.receptance = Linear(n_embd, n_embd, dtype)
        self.value = Linear(dim_ffn, n_embd, dtype)

    def forward(self, xx: Tensor, sx: Tensor) -> Tensor:
        """xx: ln2 output (T, C); sx: its token shift (T, C)."""
        r = op.sigmoid(self.receptance(mix(xx, sx, self.time_mix_r)))
        k = op.square(op.relu(self.key(mix(xx, sx, self.time_mix_k))))
        return r * self.value(k)


# --------------------------------------------------------------------------------------------
# Runtime-managed state (TVM's RNNState, as MLC-LLM's RNN models use it)
# --------------------------------------------------------------------------------------------
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
        f_gets = [bb.add_func(kernel("state_copy", s, d, "get"), f"rnn_state_get_{i}") for i, (s, d) in enumerate(infos)]
        f_sets = [bb.add_func(kernel("state_copy", s, d, "set"), f"rnn_state_set_{i}") for i, (s, d) in enumerate(infos)]
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


class StateSpec:
    """The per-layer state list of an architecture: names, shapes, dtypes and initial values."""

    def __init__(self, entries: Sequence[tuple[str, tuple[int, ...], str, float]]):
        self.entries = list(entries)

    def names(self) -> list[str]:
        return [e[0] for e in self.entries]

    def index(self, name: str) -> int:
        return self.names().index(name)

    def init_values(self) -> list[Tensor]:
        # op.full takes the fill as a Python number (it makes the relax constant itself)
        return [op.full(shape, float(fill), dtype) if fill else op.zeros(shape, dtype)
                for _, shape, dtype, fill in self.entries]

    def to_json(self) -> list[dict]:
        return [{"name": n, "shape": list(s), "dtype": d, "init": f} for n, s, d, f in self.entries]


class Embedding(nn.Module):
    """Token embedding table (V, C)."""

    def __init__(self, vocab_size: int, n_embd: int, dtype: str):
        self.weight = nn.Parameter((vocab_size, n_embd), dtype)

    def forward(self, ids: Tensor) -> Tensor:
        return gather_rows(self.weight, ids, "embedding")


@dataclasses.dataclass
class RWKVConfig(ConfigBase):
    """Fields every RWKV version has. Version configs add theirs and call ``super().__post_init__``."""

    n_layer: int = 0
    n_embd: int = 0
    vocab_size: int = 0
    dim_att: int = 0  # 0: n_embd
    dim_ffn: int = 0  # 0: the version's default
    layer_norm_eps: float = 1e-5
    rescale_every: int = 0  # halve the residual every N layers (fp16 overflow guard); 0: never
    dtype: str = "float32"
    prefill_chunk_size: int = 512
    max_batch_size: int = 8
    fp32_layers: list = dataclasses.field(default_factory=list)  # layers kept fp32 in an fp16 model

    def default_dim_ffn(self) -> int:
        raise NotImplementedError

    def __post_init__(self):
        name = type(self).__name__
        if min(self.n_layer, self.n_embd, self.vocab_size) <= 0:
            raise ConfigError(f"{name} needs positive n_layer, n_embd, vocab_size "
                              f"(got {self.n_layer}, {self.n_embd}, {self.vocab_size})")
        if min(self.dim_att, self.dim_ffn, self.rescale_every) < 0:
            raise ConfigError(f"{name}: dim_att, dim_ffn, rescale_every must be >= 0 (0: default) "
                              f"(got {self.dim_att}, {self.dim_ffn}, {self.rescale_every})")
        self.dim_att = self.dim_att or self.n_embd
        self.dim_ffn = self.dim_ffn or self.default_dim_ffn()
        bad = [i for i in self.fp32_layers if not 0 <= int(i) < self.n_layer]
        if bad:
            raise ConfigError(f"fp32_layers {bad} are not layers of this {self.n_layer}-layer model")
        if self.dtype not in ("float32", "float16"):
            raise ConfigError(f"dtype must be float32 or float16, not {self.dtype!r}")


def layer_config(cfg, layer: int):
    """The config a layer is built with: ``cfg`` itself, or an fp32 copy for the layers listed in
    ``cfg.fp32_layers`` (fp16 overflows first in the early layers of small models)."""
    return cfg.replace(dtype="float32") if layer in getattr(cfg, "fp32_layers", ()) else cfg


class Block(nn.Module):
    """One RWKV layer: ``x += att(ln1 x)``, ``x += ffn(ln2 x)``, with their carried state.

    ``att`` is the version's time mix: ``att(xx, sx, states: dict, seg) -> (out, new states)``,
    where ``att.state_names`` lists the state entries it carries besides the token-shift rows.
    """

    def __init__(self, layer: int, n_embd: int, dim_ffn: int, dtype: str, eps: float, att: nn.Module,
                 io_dtype: str | None = None):
        # dtype: this layer's compute dtype; io_dtype: the residual stream's between layers. They
        # differ for layers kept in fp32 inside an fp16 model (``fp32_layers``).
        self.layer, self.dtype, self.io_dtype = layer, dtype, io_dtype or dtype
        self.ln1 = LayerNorm(n_embd, dtype, eps)
        self.ln2 = LayerNorm(n_embd, dtype, eps)
        self.att = att
        self.ffn = ChannelMix(n_embd, dim_ffn, dtype)

    def forward(self, x: Tensor, seg: Segments, state: RNNState, spec: StateSpec):
        B = 1 if seg.single else seg.seg_last.shape[0]

        def get(name):
            _, shape, dtype, _ = spec.entries[spec.index(name)]
            value = state.get(self.layer, spec.index(name), [B, *shape], dtype)
            # token-shift rows are stored in the model dtype, used in the layer's
            return value.astype(self.dtype) if name in ("att_x", "ffn_x") and dtype != self.dtype else value

        if self.dtype != self.io_dtype:
            x = x.astype(self.dtype)
        xx = self.ln1(x)
        att_out, carried = self.att(xx, token_shift(xx, get("att_x"), seg),
                                    {n: get(n) for n in self.att.state_names}, seg)
        carried["att_x"] = last_tokens(xx, seg)
        x = x + att_out
        xx = self.ln2(x)
        x = x + self.ffn(xx, token_shift(xx, get("ffn_x"), seg))
        carried["ffn_x"] = last_tokens(xx, seg)
        for name, value in carried.items():
            stored = spec.entries[spec.index(name)][2]
            state = state.set(self.layer, spec.index(name),
                              value if value.dtype == stored else value.astype(stored))
        return (x if self.dtype == self.io_dtype else x.astype(self.io_dtype)), state


class RNNLanguageModel(nn.Module):
    """The exported interface shared by every RWKV version (MLC-LLM's RNN model functions).

    Subclasses set ``cfg``, ``embeddings``, ``blocks``, ``ln_out``, ``head`` and ``state_spec()``.
    """

    def __init__(self, cfg: RWKVConfig, time_mix: Callable[[RWKVConfig], nn.Module]):
        self.cfg = cfg
        blocks = []
        for i in range(cfg.n_layer):
            lc = layer_config(cfg, i)
            blocks.append(Block(i, lc.n_embd, lc.dim_ffn, lc.dtype, lc.layer_norm_eps, time_mix(lc),
                                io_dtype=cfg.dtype))
        self.dtype, self.n_layer, self.n_embd, self.vocab_size = (
            cfg.dtype, cfg.n_layer, cfg.n_embd, cfg.vocab_size)
        self.embeddings = Embedding(cfg.vocab_size, cfg.n_embd, cfg.dtype)
        self.blocks = nn.ModuleList(blocks)
        self.ln_out = LayerNorm(cfg.n_embd, cfg.dtype, cfg.layer_norm_eps)
        self.head = Linear(cfg.n_embd, cfg.vocab_size, cfg.dtype, out_dtype="float32", role="head")

    def state_spec(self) -> StateSpec:
        raise NotImplementedError

    def forward_packed(self, x: Tensor, seg: Segments, state: RNNState):
        """x: (T, C) packed tokens -> (hidden (B, C) at each sequence's last token, state)."""
        spec = self.state_spec()
        for i, block in enumerate(self.blocks):
            x, state = block(x, seg, state, spec)
            # ChatRWKV's RESCALE_LAYER: halve the residual to stay in fp16 range (weights were
            # pre-divided at load to match)
            if self.cfg.rescale_every and (i + 1) % self.cfg.rescale_every == 0:
                x = x / 2.0
        return last_tokens(x, seg), state

    def _logits(self, hidden: Tensor) -> Tensor:
        return self.head(self.ln_out(hidden))  # (B, V) fp32

    # ---- exported functions -------------------------------------------------------------
    def embed(self, input_ids: Tensor) -> Tensor:
        """input_ids: (T,) int32 -> (T, C)."""
        return self.embeddings(input_ids)

    def prefill(self, input_embed: Tensor, state: RNNState):
        """One sequence: (1, T, C) -> logits of its last token (1, 1, V)."""
        x = op.reshape(input_embed, [input_embed.shape[1], self.n_embd])  # (T, C)
        hidden, state = self.forward_packed(x, Segments(), state)
        return op.reshape(self._logits(hidden), [1, 1, self.vocab_size]), state

    def decode(self, input_embed: Tensor, state: RNNState):
        """One sequence, one token: (1, 1, C) -> (1, 1, V)."""
        return self.prefill(input_embed, state)

    def batch_prefill(self, input_embeds: Tensor, logit_positions: Tensor, state: RNNState):
        """B sequences packed back to back: (1, T, C), last-token indices (B,) -> (1, B, V)."""
        x = op.reshape(input_embeds, [input_embeds.shape[1], self.n_embd])  # (T, C)
        hidden, state = self.forward_packed(x, Segments(logit_positions), state)
        return op.reshape(self._logits(hidden), [1, logit_positions.shape[0], self.vocab_size]), state

    def batch_decode(self, input_embeds: Tensor, state: RNNState):
        """B sequences, one token each: (B, 1, C) -> (B, 1, V)."""
        batch = input_embeds.shape[0]
        x = op.reshape(input_embeds, [batch, self.n_embd])  # (B, C)
        hidden, state = self.forward_packed(x, Segments.one_token_each(batch), state)
        return op.reshape(self._logits(hidden), [batch, 1, self.vocab_size]), state

    def create_rnn_state(self, max_batch_size: tirx.Var, max_history: tirx.Var) -> RNNState:
        return RNNState.create(max_batch_size, max_history, self.n_layer,
                               self.state_spec().init_values())

    def get_default_spec(self) -> dict:
        emb = self.n_embd
        obj = nn.spec.Object(object_type=RNNState)
        packed = {"param_mode": "packed", "effect_mode": "none"}
        return {
            "embed": {"input_ids": nn.spec.Tensor(["seq_len"], "int32"), "$": packed},
            "prefill": {"input_embed": nn.spec.Tensor([1, "seq_len", emb], self.dtype),
                        "state": obj, "$": packed},
            "decode": {"input_embed": nn.spec.Tensor([1, 1, emb], self.dtype),
                       "state": obj, "$": packed},
            "batch_prefill": {"input_embeds": nn.spec.Tensor([1, "seq_len", emb], self.dtype),
                              "logit_positions": nn.spec.Tensor(["batch_size"], "int32"),
                              "state": obj, "$": packed},
            "batch_decode": {"input_embeds": nn.spec.Tensor(["batch_size", 1, emb], self.dtype),
                             "state": obj, "$": packed},
            "create_rnn_state": {"max_batch_size": int, "max_history": int,
                                 "$": {"param_mode": "none", "effect_mode": "none"}},
        }
