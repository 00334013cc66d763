"""The module transform (swap layers for quantized ones) and the weight plan that goes with it.

Policy, decided here and only here, by layer *type*: ``Linear`` and ``Embedding`` layers are
quantized; everything else (time_decay, time_first/time_faaaa, ln_x, layer norms, token-mix
vectors, the state) is not, because those are not Linear/Embedding parameters. The embedding
table and the head (the Linear flagged ``role="head"``) can be kept in the activation dtype.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from tvm import te
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from ..errors import RWKVRelaxError
from ..models.common import Embedding, Linear
from . import group_quant as gq
from .modes import QuantMode


@dataclasses.dataclass(frozen=True)
class WeightPlan:
    """How each float parameter of the unquantized model becomes the quantized model's params:
    ``source param -> (function(array) -> tuple of arrays, target param names)``."""

    entries: dict[str, tuple[Callable[[np.ndarray], tuple[np.ndarray, ...]], tuple[str, ...]]]

    def apply(self, name: str, array: np.ndarray) -> list[tuple[str, np.ndarray]]:
        if name not in self.entries:
            return [(name, array)]
        fn, targets = self.entries[name]
        return list(zip(targets, fn(array)))


class GroupQuantLinear(nn.Module):
    """``Linear`` with group-quantized weights; dequantization is fused into the matmul (one TE
    function), so decode reads only the packed bytes."""

    def __init__(self, lin: Linear, mode: QuantMode):
        self.in_features, self.out_features = lin.in_features, lin.out_features
        self.out_dtype, self.bits, self.group = lin.out_dtype, mode.weight_bits, mode.group_size
        q_shape, s_shape = gq.packed_shapes(lin.out_features, lin.in_features, self.bits, self.group)
        self.q_weight = nn.Parameter(q_shape, "uint32")
        self.q_scale = nn.Parameter(s_shape, mode.act_dtype)

    def forward(self, x: Tensor) -> Tensor:
        bits, group, out_dtype = self.bits, self.group, self.out_dtype

        def dequantize_matmul(x, q, scale):  # x: (T, K) -> (T, N)
            w = gq.te_dequantize(q, scale, bits, group, "float32")
            k = te.reduce_axis((0, x.shape[1]), name="k")
            acc = te.compute((x.shape[0], w.shape[0]),
                             lambda t, n: te.sum(x[t, k].astype("float32") * w[n, k], axis=k),
                             name="matmul")
            if out_dtype == "float32":
                return acc
            return te.compute(acc.shape, lambda t, n: acc[t, n].astype(out_dtype), name="cast")
        return op.tensor_expr_op(dequantize_matmul, "dequantize_matmul", [x, self.q_weight, self.q_scale])


class GroupQuantEmbedding(nn.Module):
    """Embedding table stored group-quantized along channels; rows are dequantized on gather."""

    def __init__(self, emb: Embedding, mode: QuantMode):
        vocab, n_embd = emb.weight.shape
        self.dtype, self.bits, self.group = emb.weight.dtype, mode.weight_bits, mode.group_size
        q_shape, s_shape = gq.packed_shapes(int(vocab), int(n_embd), self.bits, self.group)
        self.q_weight = nn.Parameter(q_shape, "uint32")
        self.q_scale = nn.Parameter(s_shape, mode.act_dtype)

    def forward(self, ids: Tensor) -> Tensor:
        bits, group, dtype = self.bits, self.group, self.dtype

        def gather(q, scale, ids):
            w = gq.te_dequantize(q, scale, bits, group, dtype)
            return te.compute((ids.shape[0], w.shape[1]), lambda t, c: w[ids[t], c], name="embedding")
        return op.tensor_expr_op(gather, "dequantize_embedding", [self.q_weight, self.q_scale, ids])


def quantize_model(model: nn.Module, mode: QuantMode, keep_embedding_head: bool = False):
    """Swap quantizable layers in ``model`` (in place) and return ``(model, WeightPlan)``."""
    entries: dict = {}
    if not mode.quantized:
        return model, WeightPlan(entries)

    def quantizer(weight_name: str, prefix: str):
        def quantize_weight(w: np.ndarray):
            return gq.quantize(w, mode.weight_bits, mode.group_size, mode.act_dtype)
        entries[weight_name] = (quantize_weight, (prefix + "q_weight", prefix + "q_scale"))

    class _Swap(nn.Mutator):
        def visit_module(self, name, node):
            prefix = f"{name}." if name else ""
            keep = keep_embedding_head and (isinstance(node, Embedding) or getattr(node, "role", "") == "head")
            if isinstance(node, (Linear, Embedding)) and not keep:
                width = int(node.weight.shape[1])
                if width % mode.group_size:
                    raise RWKVRelaxError(
                        f"{prefix}weight has {width} input channels, not a multiple of the group size "
                        f"{mode.group_size} of {mode.name}; use q0f16 or q0f32 for this model")
                quantizer(prefix + "weight", prefix)
                cls = GroupQuantLinear if isinstance(node, Linear) else GroupQuantEmbedding
                return cls(node, mode)
            return super().visit_module(name, node)

    model = _Swap().visit("", model)
    return model, WeightPlan(entries)
