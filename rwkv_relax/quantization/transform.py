"""The module transform: swap layers for quantized ones.

Policy, decided here and only here, by layer *type*: ``Linear``, ``FFNValue`` (the channel mix's
hidden-major value) and ``Embedding`` layers are quantized; everything else (time_decay,
time_first/time_faaaa, ln_x, layer norms, token-mix vectors, the state, RWKV-7's LoRA factors) is
not, because those are not parameters of these layers. The embedding table and the head (the
Linear flagged ``role="head"``) can be kept in the activation dtype. The weights follow the
parameter names the swap leaves (``X.weight`` becomes ``X.q_weight`` + ``X.q_scale``, FFNValue's
``X.weight_t`` becomes ``X.q_weight_t`` + ``X.q_scale_t``; see :func:`..weights.library_params`).
"""
from __future__ import annotations

from tvm import te
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from ..errors import RWKVRelaxError
from ..models import ops
from ..models.layers import Embedding, FFNValue, Linear
from . import group_quant as gq
from .modes import QuantMode


class GroupQuantLinear(nn.Module):
    """``Linear`` with group-quantized weights; dequantization is fused into an fp32-accumulating
    matmul (tir_kernels/quant_matmul/), so decode reads only the packed bytes. One row
    (decode) calls the tagged ``q_gemv`` kernel (CPU form: a hand-written GEMV; GPU form: the TE
    function for dlight's GEMV rule); more rows the TE function, which the CPU matmul schedule
    or dlight schedules."""

    def __init__(self, lin: Linear, mode: QuantMode):
        self.in_features, self.out_features = lin.in_features, lin.out_features
        self.out_dtype, self.bits, self.group = lin.out_dtype, mode.weight_bits, mode.group_size
        q_shape, s_shape = gq.packed_shapes(lin.out_features, lin.in_features, self.bits, self.group)
        self.q_weight = nn.Parameter(q_shape, "uint32")
        self.q_scale = nn.Parameter(s_shape, mode.act_dtype)

    def forward(self, x: Tensor) -> Tensor:
        bits, group, out_dtype = self.bits, self.group, self.out_dtype
        if isinstance(x.shape[0], int) and x.shape[0] == 1:
            return ops.q_gemv(x, self.q_weight, self.q_scale, self.out_features, self.in_features,
                              bits, group, out_dtype)
        # built on the caller's shapes, so the symbolic token count is shared with the graph
        return op.tensor_expr_op(lambda x, q, s: ops.q_matmul_te(x, q, s, bits, group, out_dtype),
                                 "dequantize_matmul", [x, self.q_weight, self.q_scale])


class GroupQuantFFNValue(nn.Module):
    """``FFNValue`` with its hidden-major (F, C) weight group-quantized along C: each hidden unit's
    row holds its own codes and scales, so skipping a row skips all its bytes. Parameters
    ``q_weight_t`` (F, C*bits/32) and ``q_scale_t`` (F, C/group)."""

    def __init__(self, val: FFNValue, mode: QuantMode):
        self.out_features, self.dtype = val.out_features, val.dtype
        self.bits, self.group = mode.weight_bits, mode.group_size
        q_shape, s_shape = gq.packed_shapes(val.in_features, val.out_features, self.bits, self.group)
        self.q_weight_t = nn.Parameter(q_shape, "uint32")
        self.q_scale_t = nn.Parameter(s_shape, mode.act_dtype)

    def forward(self, k: Tensor) -> Tensor:
        return ops.ffn_value_q(k, self.q_weight_t, self.q_scale_t, self.out_features, self.bits, self.group,
                               self.dtype)


class GroupQuantEmbedding(nn.Module):
    """Embedding table stored group-quantized along channels. Only the gathered rows are
    dequantized: one compute reads q[ids[t]] (a dequantize stage over the whole table would run
    unscheduled on llvm and cost more than the rest of a decode step)."""

    def __init__(self, emb: Embedding, mode: QuantMode):
        vocab, n_embd = emb.weight.shape
        self.dtype, self.bits, self.group = emb.weight.dtype, mode.weight_bits, mode.group_size
        q_shape, s_shape = gq.packed_shapes(int(vocab), int(n_embd), self.bits, self.group)
        self.q_weight = nn.Parameter(q_shape, "uint32")
        self.q_scale = nn.Parameter(s_shape, mode.act_dtype)

    def forward(self, ids: Tensor) -> Tensor:
        bits, group, dtype = self.bits, self.group, self.dtype

        def gather(q, scale, ids):
            return te.compute((ids.shape[0], q.shape[1] * (32 // bits)),
                              lambda t, c: ops.dequantize_element(q, scale, ids[t], c, bits, group).astype(dtype),
                              name="embedding")
        return op.tensor_expr_op(gather, "dequantize_embedding", [self.q_weight, self.q_scale, ids])


def quantize_model(model: nn.Module, mode: QuantMode, keep_embedding_head: bool = False) -> nn.Module:
    """Swap quantizable layers in ``model`` (in place) and return it."""
    if not mode.quantized:
        return model

    class _Swap(nn.Mutator):
        def visit_module(self, name, node):
            prefix = f"{name}." if name else ""
            keep = keep_embedding_head and (isinstance(node, Embedding) or getattr(node, "role", "") == "head")
            if isinstance(node, (Linear, Embedding, FFNValue)) and not keep:
                # groups run along the stored rows: the input channels, or FFNValue's C
                width = int((node.weight_t if isinstance(node, FFNValue) else node.weight).shape[1])
                if width % mode.group_size:
                    raise RWKVRelaxError(
                        f"{prefix}weight has {width} input channels, not a multiple of the group size "
                        f"{mode.group_size} of {mode.name}; use q0f16 or q0f32 for this model")
                cls = {Linear: GroupQuantLinear, Embedding: GroupQuantEmbedding,
                       FFNValue: GroupQuantFFNValue}[type(node)]
                return cls(node, mode)
            return super().visit_module(name, node)

    return _Swap().visit("", model)
