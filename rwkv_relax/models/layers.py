"""Layers every RWKV version uses: packed-batch bookkeeping, token shift, the linear layer with
fp32 accumulation, LayerNorm in fp32, the embedding.

Letters: B sequences in a batch, T tokens (packed back to back over all sequences), C channels,
F feed-forward width, V vocabulary.
"""
from __future__ import annotations

from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from . import ops

F32 = "float32"


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


def lerp(xx: Tensor, sx: Tensor, m: Tensor) -> Tensor:
    """RWKV-6/7's token shift, written as the reference writes it: ``x + (x_prev - x) * m``
    (RWKV-4/5's :func:`mix` weights the other way round)."""
    return xx + (sx - xx) * m


class LoRA(nn.Module):
    """``up(act(down(x)))``, a low-rank product (not a ``Linear``: never quantized). Both matmuls
    accumulate in fp32; ``act`` runs in fp32 and the result is ``out_dtype``. (C,) -> (out_features,),
    C by default."""

    def __init__(self, C: int, D: int, dtype: str, act=None, out_dtype: str = F32, out_features: int | None = None):
        self.down = nn.Parameter((D, C), dtype)
        self.up = nn.Parameter((out_features or C, D), dtype)
        self.act, self.dtype, self.out_dtype = act, dtype, out_dtype

    def forward(self, x: Tensor) -> Tensor:
        h = op.matmul(x, op.permute_dims(self.down), out_dtype=F32)  # (T, C) -> (T, D)
        if self.act is not None:
            h = self.act(h)
        h = h if self.dtype == F32 else h.astype(self.dtype)
        y = op.matmul(h, op.permute_dims(self.up), out_dtype=F32)  # (T, D) -> (T, C)
        return y if self.out_dtype == F32 else y.astype(self.out_dtype)


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


class FFNValue(nn.Module):
    """The channel mix's last product ``y = V k`` with ``k = relu(K x)^2``, stored hidden-major:
    ``weight_t`` = V.T (F, C), one row per hidden unit, so the kernel (tir_kernels/ffn_value/)
    reads only the rows of the nonzero entries of k (about half with random weights, most of
    them in trained models): the same result from fewer bytes. Accumulates in fp32."""

    def __init__(self, in_features: int, out_features: int, dtype: str):
        self.in_features, self.out_features, self.dtype = in_features, out_features, dtype
        self.weight_t = nn.Parameter((in_features, out_features), dtype)

    def forward(self, k: Tensor) -> Tensor:
        return ops.ffn_value(k, self.weight_t, self.dtype)


def ffn_value(cfg) -> nn.Module:
    """The channel mix's value layer in the layout ``cfg.ffn_value_layout`` names: hidden-major
    (sparse reads) or the checkpoint's dense (C, F) ``Linear``."""
    F, C, dt = cfg.dim_ffn, cfg.n_embd, cfg.dtype
    return FFNValue(F, C, dt) if cfg.ffn_value_layout == "hidden_major" else Linear(F, C, dt)


class ChannelMix(nn.Module):
    """RWKV-4/5 channel mix: ``sigmoid(R x_r) * V relu(K x_k)^2``."""

    def __init__(self, cfg):
        C, F, dt = cfg.n_embd, cfg.dim_ffn, cfg.dtype
        self.time_mix_k = nn.Parameter((C,), dt)
        self.time_mix_r = nn.Parameter((C,), dt)
        self.key = Linear(C, F, dt)
        self.receptance = Linear(C, C, dt)
        self.value = ffn_value(cfg)

    def forward(self, xx: Tensor, sx: Tensor) -> Tensor:
        """xx: ln2 output (T, C); sx: its token shift (T, C)."""
        r = op.sigmoid(self.receptance(mix(xx, sx, self.time_mix_r)))
        k = op.square(op.relu(self.key(mix(xx, sx, self.time_mix_k))))
        return r * self.value(k)


class Embedding(nn.Module):
    """Token embedding table (V, C)."""

    def __init__(self, vocab_size: int, n_embd: int, dtype: str):
        self.weight = nn.Parameter((vocab_size, n_embd), dtype)

    def forward(self, ids: Tensor) -> Tensor:
        return gather_rows(self.weight, ids, "embedding")
