"""RWKV-5.2 ("World"): config and nn.Modules.

Follows ChatRWKV ``rwkv/model.py`` (``att_one_v5_1`` / ``att_seq_v5_2``, ``ffn_*``) line by line
where rounding matters. Parameters hold the *load-time transformed* weights (see
``loaders/rwkv5.py``): ln0 folded into the embedding, ``time_decay`` as the decay factor
``w = exp(-exp(time_decay))``, ``time_faaaa`` as the bonus ``u``, time-mix vectors squeezed to (C,).
"""
from __future__ import annotations

import dataclasses

from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from tir_kernels import kernel

from ..errors import ConfigError
from .common import Linear, RNNLanguageModel, RWKVConfig, Segments, StateSpec, mix


@dataclasses.dataclass
class RWKV5Config(RWKVConfig):
    """Shape and numerics of an RWKV-5.2 model."""

    model_type = "rwkv5"

    vocab_size: int = 65536
    head_size: int = 64
    ln_x_eps: float = 64e-5  # notice: ChatRWKV v5.2 GroupNorm eps; rwkv.cpp/MLC use 1e-5 (wrong)

    def default_dim_ffn(self) -> int:
        return int(self.n_embd * 3.5) // 32 * 32  # as the World models were trained

    def __post_init__(self):
        super().__post_init__()
        if self.dim_att % self.head_size:
            raise ConfigError(f"dim_att {self.dim_att} is not a multiple of head_size {self.head_size}")

    @property
    def n_head(self) -> int:
        return self.dim_att // self.head_size


class TimeMix(nn.Module):
    """RWKV-5.2 time mix: token-shifted r/k/v/g projections, the WKV5 scan, GroupNorm ln_x,
    silu gate, output projection."""

    def __init__(self, cfg: RWKV5Config):
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

    state_names = ("att_kv",)

    def forward(self, xx: Tensor, sx: Tensor, states: dict, seg: Segments):
        """xx: ln1 output (T, C); sx: its token shift; states["att_kv"]: (B, H, N, N) fp32."""
        T, H, N, s = xx.shape[0], self.H, self.N, states["att_kv"]
        r = op.reshape(self.receptance(mix(xx, sx, self.time_mix_r)), [T, H, N])
        k = op.reshape(self.key(mix(xx, sx, self.time_mix_k)), [T, H, N])
        v = op.reshape(self.value(mix(xx, sx, self.time_mix_v)), [T, H, N])
        g = op.silu(self.gate(mix(xx, sx, self.time_mix_g)))
        if seg.single:
            out, s_new = op.tensor_ir_op(
                kernel("wkv5", H, N), "wkv5",
                [r, k, v, self.time_decay, self.time_faaaa, op.reshape(s, [H, N, N])],
                [Tensor.placeholder([T, H, N], "float32"), Tensor.placeholder([H, N, N], "float32")])
            s_new = op.reshape(s_new, [1, H, N, N])
        else:
            out, s_new = op.tensor_ir_op(
                kernel("wkv5_ragged", H, N), "wkv5_ragged",
                [r, k, v, self.time_decay, self.time_faaaa, s, seg.seg_last],
                [Tensor.placeholder([T, H, N], "float32"), Tensor.placeholder(s.shape, "float32")])
        # GroupNorm over heads, in fp32, with the reference's eps (64e-5)
        out = op.group_norm(op.reshape(out, [T, self.A]), H, self.ln_x_weight, self.ln_x_bias,
                            eps=self.ln_x_eps, channel_axis=1, axes=[])
        if self.dtype != "float32":
            out = out.astype(self.dtype)
        return self.output(out * g), {"att_kv": s_new}


class RWKV5(RNNLanguageModel):
    """RWKV-5.2 language model with the MLC-style RNN interface."""

    def __init__(self, cfg: RWKV5Config):
        super().__init__(cfg, TimeMix)

    def state_spec(self) -> StateSpec:
        c = self.cfg
        return StateSpec([
            ("att_x", (c.n_embd,), c.dtype, 0.0),
            ("att_kv", (c.n_head, c.head_size, c.head_size), "float32", 0.0),
            ("ffn_x", (c.n_embd,), c.dtype, 0.0),
        ])
