"""RWKV-4 (Pile, Raven, World) time mix.

Follows ChatRWKV ``rwkv/model.py`` (``att_one`` / ``att_seq``) where rounding matters. Parameters
hold the *load-time transformed* weights (``names.py``): ln0 folded into the embedding,
``time_decay`` as ``w = -exp(time_decay)`` (the per-token decay in log space), ``time_first`` as
stored (the bonus ``u``), time-mix vectors squeezed to (C,). Letters as in
``models/layers.py``, plus A = dim_att, the width of the WKV channels.
"""
from __future__ import annotations

from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from ...models import ops
from ...models.base import RNNLanguageModel
from ...models.layers import ChannelMix, Linear, mix
from ...models.state import StateEntry
from .config import RWKV4Config

# ChatRWKV's fresh pp ("zeros - 1e30"): the running exponent of a state that has seen no token, so
# that exp(pp - p) is exactly 0 on the first token.
FRESH_PP = -1e30


class TimeMix(nn.Module):
    """Token-shifted k/v/r projections, the WKV4 scan, ``output(r * wkv)``.

    State per sequence (all (A,) fp32, ChatRWKV's names): ``aa`` and ``bb`` are the numerator and
    denominator of the decayed weighted average of past values, both scaled by ``exp(-pp)``;
    ``pp`` is the running exponent that keeps every exp argument non-positive (see
    ``tir_kernels/wkv4.py``).
    """

    @staticmethod
    def state_entries(cfg: RWKV4Config) -> list[StateEntry]:
        """ChatRWKV's five entries per layer are att_xx, these three, ffn_xx."""
        A = cfg.dim_att
        return [StateEntry("att_aa", (A,), "float32"), StateEntry("att_bb", (A,), "float32"),
                StateEntry("att_pp", (A,), "float32", FRESH_PP)]

    def __init__(self, cfg: RWKV4Config, layer: int):
        C, A, dt = cfg.n_embd, cfg.dim_att, cfg.dtype
        self.dtype = dt
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

    def forward(self, xx: Tensor, sx: Tensor, st, ctx: dict) -> Tensor:
        r = op.sigmoid(self.receptance(mix(xx, sx, self.time_mix_r)))  # (T, A) dtype
        k = self.key(mix(xx, sx, self.time_mix_k))  # (T, A) fp32
        v = self.value(mix(xx, sx, self.time_mix_v))  # (T, A) fp32
        names = ("att_aa", "att_bb", "att_pp")
        wkv, new = ops.wkv4(k, v, self.time_decay, self.time_first, *(st.get(n) for n in names),
                            st.seg.seg_last)
        for name, value in zip(names, new):
            st.put(name, value)
        if self.dtype != "float32":
            wkv = wkv.astype(self.dtype)  # att_seq: ((e1 * aa + e2 * vv) / (e1 * bb + e2)).to(x.dtype)
        return self.output(r * wkv)


class RWKV4(RNNLanguageModel):
    """RWKV-4 language model with the MLC-style RNN interface."""

    TimeMix = TimeMix
    ChannelMix = ChannelMix


MODEL = RWKV4
