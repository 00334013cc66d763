"""RWKV-4 (Pile, Raven, World): config and the time-mix module.

Follows ChatRWKV ``rwkv/model.py`` (``att_one`` / ``att_seq``) where rounding matters. Everything
but the time mix (block, channel mix, LayerNorms, head, state plumbing) is ``models/common.py``.
Parameters hold the *load-time transformed* weights (see ``loaders/rwkv4.py``): ln0 folded into
the embedding, ``time_decay`` as ``w = -exp(time_decay)`` (the per-token decay in log space),
``time_first`` as stored (the bonus ``u``), time-mix vectors squeezed to (C,).

Letters as in ``common.py``, plus A = dim_att, the width of the WKV channels.
"""
from __future__ import annotations

import dataclasses

from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from tir_kernels import kernel

from .common import Linear, RNNLanguageModel, RWKVConfig, Segments, StateSpec, mix

# ChatRWKV's fresh pp ("zeros - 1e30"): the running exponent of a state that has seen no token, so
# that exp(pp - p) is exactly 0 on the first token.
FRESH_PP = -1e30


@dataclasses.dataclass
class RWKV4Config(RWKVConfig):
    """Shape and numerics of an RWKV-4 model."""

    model_type = "rwkv4"

    vocab_size: int = 50277  # Pile / Raven (GPT-NeoX 20B tokenizer); World models use 65536

    def default_dim_ffn(self) -> int:
        return 4 * self.n_embd  # as every released RWKV-4 was trained


class TimeMix(nn.Module):
    """RWKV-4 time mix: token-shifted k/v/r projections, the WKV4 scan, ``output(r * wkv)``.

    State per sequence (all (A,) fp32, ChatRWKV's names): ``aa`` and ``bb`` are the numerator and
    denominator of the decayed weighted average of past values, both scaled by ``exp(-pp)``;
    ``pp`` is the running exponent that keeps every exp argument non-positive (see
    ``tir_kernels/wkv4.py``).
    """

    state_names = ("att_aa", "att_bb", "att_pp")

    def __init__(self, cfg: RWKV4Config):
        C, A, dt = cfg.n_embd, cfg.dim_att, cfg.dtype
        self.A, self.dtype = A, dt
        self.time_mix_k = nn.Parameter((C,), dt)
        self.time_mix_v = nn.Parameter((C,), dt)
        self.time_mix_r = nn.Parameter((C,), dt)
        self.time_decay = nn.Parameter((A,), "float32")  # w = -exp(.), fp32 always
        self.time_first = nn.Parameter((A,), "float32")  # bonus u of the current token, fp32 always
        # r stays in the activation dtype (att_seq: sigmoid(matmul(rx, rw))); k and v feed the
        # fp32 scan (matmul(..., output_dtype=torch.float32))
        self.receptance = Linear(C, A, dt)
        self.key = Linear(C, A, dt, out_dtype="float32")
        self.value = Linear(C, A, dt, out_dtype="float32")
        self.output = Linear(A, C, dt)

    def forward(self, xx: Tensor, sx: Tensor, states: dict, seg: Segments):
        """xx: ln1 output (T, C); sx: its token shift; states[att_aa|att_bb|att_pp]: (B, A) fp32."""
        T, A = xx.shape[0], self.A
        r = op.sigmoid(self.receptance(mix(xx, sx, self.time_mix_r)))  # (T, A) dtype
        k = self.key(mix(xx, sx, self.time_mix_k))  # (T, A) fp32
        v = self.value(mix(xx, sx, self.time_mix_v))  # (T, A) fp32
        # The kernels take aa, bb, pp packed as one (3, ...) buffer in and one out: as separate
        # buffers they would bind more storage buffers than a WebGPU shader may (tir_kernels/wkv4.py).
        carried = [states[n] for n in self.state_names]  # 3 x (B, A)
        f32 = "float32"
        if seg.single:
            s_in = op.concat(carried, dim=0)  # 3 x (B=1, A) -> (3, A)
            wkv, s_out = op.tensor_ir_op(
                kernel("wkv4", A), "wkv4",
                [k, v, self.time_decay, self.time_first, s_in],
                [Tensor.placeholder([T, A], f32), Tensor.placeholder([3, A], f32)])
            new = op.split(s_out, 3, axis=0)  # (3, A) -> 3 x (B=1, A)
        else:
            B = carried[0].shape[0]
            s_in = op.concat([op.reshape(s, [1, B, A]) for s in carried], dim=0)  # 3 x (B, A) -> (3, B, A)
            wkv, s_out = op.tensor_ir_op(
                kernel("wkv4_ragged", A), "wkv4_ragged",
                [k, v, self.time_decay, self.time_first, s_in, seg.seg_last],
                [Tensor.placeholder([T, A], f32), Tensor.placeholder([3, B, A], f32)])
            new = [op.reshape(s, [B, A]) for s in op.split(s_out, 3, axis=0)]  # (3, B, A) -> 3 x (B, A)
        if self.dtype != f32:
            wkv = wkv.astype(self.dtype)  # att_seq: ((e1 * aa + e2 * vv) / (e1 * bb + e2)).to(x.dtype)
        return self.output(r * wkv), dict(zip(self.state_names, new))


class RWKV4(RNNLanguageModel):
    """RWKV-4 language model with the MLC-style RNN interface."""

    def __init__(self, cfg: RWKV4Config):
        super().__init__(cfg, TimeMix)

    def state_spec(self) -> StateSpec:
        """ChatRWKV's five entries per layer (0=att_xx 1=att_aa 2=att_bb 3=att_pp 4=ffn_xx)."""
        C, A, dt = self.cfg.n_embd, self.cfg.dim_att, self.cfg.dtype
        wkv = [(name, (A,), "float32", FRESH_PP if name == "att_pp" else 0.0)
               for name in TimeMix.state_names]
        return StateSpec([("att_x", (C,), dt, 0.0), *wkv, ("ffn_x", (C,), dt, 0.0)])
