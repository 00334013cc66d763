"""RWKV-5.2 ("World") time mix.

Follows ChatRWKV ``rwkv/model.py`` (``att_one_v5_1`` / ``att_seq_v5_2``) line by line where
rounding matters. Parameters hold the *load-time transformed* weights (``names.py``): ln0 folded
into the embedding, ``time_decay`` as the decay factor ``w = exp(-exp(time_decay))``,
``time_faaaa`` as the bonus ``u``, time-mix vectors squeezed to (C,). Letters as in
``models/layers.py``, plus H heads of N channels, A = H * N.
"""
from __future__ import annotations

from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from ...models import ops
from ...models.base import RNNLanguageModel
from ...models.layers import ChannelMix, Linear, mix
from ...models.state import StateEntry
from .config import RWKV5Config


class TimeMix(nn.Module):
    """Token-shifted r/k/v/g projections, the WKV5 scan, GroupNorm ln_x, silu gate, output."""

    @staticmethod
    def state_entries(cfg: RWKV5Config) -> list[StateEntry]:
        # S[h, key i, value j], fp32 always (ChatRWKV keeps the same orientation)
        return [StateEntry("att_kv", (cfg.n_head, cfg.head_size, cfg.head_size), "float32")]

    def __init__(self, cfg: RWKV5Config, layer: int):
        C, A, dt = cfg.n_embd, cfg.dim_att, cfg.dtype
        self.H, self.N, self.A = cfg.n_head, cfg.head_size, A
        self.ln_x_eps = cfg.ln_x_eps
        self.dtype = dt
        self.time_mix_k = nn.Parameter((C,), dt)
        self.time_mix_v = nn.Parameter((C,), dt)
        self.time_mix_r = nn.Parameter((C,), dt)
        self.time_mix_g = nn.Parameter((C,), dt)
        self.time_decay = nn.Parameter((self.H, self.N), "float32")  # w = exp(-exp(.)), fp32 always
        self.time_faaaa = nn.Parameter((self.H, self.N), "float32")  # bonus u, fp32 always
        self.receptance = Linear(C, A, dt, out_dtype="float32")
        self.key = Linear(C, A, dt, out_dtype="float32")
        self.value = Linear(C, A, dt, out_dtype="float32")
        self.gate = Linear(C, A, dt)
        self.output = Linear(A, C, dt)
        self.ln_x_weight = nn.Parameter((A,), "float32")
        self.ln_x_bias = nn.Parameter((A,), "float32")

    def forward(self, xx: Tensor, sx: Tensor, st, ctx: dict) -> Tensor:
        T, H, N = xx.shape[0], self.H, self.N
        r = op.reshape(self.receptance(mix(xx, sx, self.time_mix_r)), [T, H, N])  # (T, A) -> (T, H, N)
        k = op.reshape(self.key(mix(xx, sx, self.time_mix_k)), [T, H, N])
        v = op.reshape(self.value(mix(xx, sx, self.time_mix_v)), [T, H, N])
        g = op.silu(self.gate(mix(xx, sx, self.time_mix_g)))
        # out[t] = r (u k v^T + S); S <- diag(w) S + k v^T
        out, s = ops.wkv5(r, k, v, self.time_decay, self.time_faaaa, st.get("att_kv"), st.seg.seg_last)
        st.put("att_kv", s)
        # GroupNorm over heads, in fp32, with the reference's eps (64e-5)
        out = op.group_norm(op.reshape(out, [T, self.A]), H, self.ln_x_weight, self.ln_x_bias,
                            eps=self.ln_x_eps, channel_axis=1, axes=[])
        if self.dtype != "float32":
            out = out.astype(self.dtype)
        return self.output(out * g)


class RWKV5(RNNLanguageModel):
    """RWKV-5.2 language model with the MLC-style RNN interface."""

    TimeMix = TimeMix
    ChannelMix = ChannelMix


MODEL = RWKV5
