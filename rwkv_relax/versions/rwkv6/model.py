"""RWKV-6 ("Finch", x060) time mix and channel mix.

Follows ChatRWKV ``rwkv/model.py`` (``att_one_v6_0`` / ``att_seq_v6_0``, ``ffn_*_v6``) where
rounding matters. Parameters hold the load-time transformed weights (``names.py``): ln0 folded
into the embedding, vectors flat, the LoRA factors as linear-layer weights (the five stacked
ddlerp up-projections split into ``up_w`` ... ``up_g``), ``time_decay`` raw in fp32. Letters as
in ``models/layers.py``, plus H heads of N channels (A = H * N) and the LoRA widths D.

Per token, with x_prev the previous token's ln1 output (the token shift)::

    m_*  = tanh((x + (x_prev - x) maa_x) W1)_* W2_*        ddlerp, * in w, k, v, r, g
    x_*  = x + (x_prev - x) (maa_* + m_*)
    r, k, v = W_r x_r, W_k x_k, W_v x_v (fp32);   g = silu(W_g x_g)
    w    = exp(-exp(time_decay + tanh(x_w D1) D2))         per-token decay, fp32
    y    = r (u k v^T + S);   S <- diag(w) S + k v^T       S is [key, value]; y reads S before
    out  = W_o(GroupNorm(y) * g)
"""
from __future__ import annotations

from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from ...models import ops
from ...models.base import RNNLanguageModel
from ...models.layers import Linear, LoRA, ffn_value, lerp
from ...models.state import StateEntry
from .config import RWKV6Config
from .names import MIXES

F32 = "float32"


class DDLerp(nn.Module):
    """The data-dependent token shift: one shared down-projection of ``x + (x_prev - x) maa_x``,
    tanh, and an up-projection per mix (w, k, v, r, g), each added to that mix's static ``maa``.
    Not ``Linear``s: never quantized."""

    def __init__(self, C: int, D: int, dtype: str):
        self.down = nn.Parameter((len(MIXES) * D, C), dtype)
        for m in MIXES:
            setattr(self, f"up_{m}", nn.Parameter((C, D), dtype))
        self.dtype = dtype

    def forward(self, xx: Tensor, dx: Tensor, maa_x: Tensor) -> dict[str, Tensor]:
        """xx: (T, C) ln1 output; dx = x_prev - xx -> the five data-dependent offsets (T, C)."""
        h = op.tanh(op.matmul(xx + dx * maa_x, op.permute_dims(self.down), out_dtype=F32))  # (T, 5D)
        h = h if self.dtype == F32 else h.astype(self.dtype)
        out = {}
        for m, hm in zip(MIXES, op.split(h, len(MIXES), axis=1)):  # (T, 5D) -> 5 x (T, D)
            y = op.matmul(hm, op.permute_dims(getattr(self, f"up_{m}")), out_dtype=F32)  # (T, C)
            out[m] = y if self.dtype == F32 else y.astype(self.dtype)
        return out


class TimeMix(nn.Module):
    """ddlerp token mixing, r/k/v/g projections, the data-dependent decay, the WKV6 scan,
    GroupNorm ln_x, silu gate, output."""

    @staticmethod
    def state_entries(cfg: RWKV6Config) -> list[StateEntry]:
        # S[h, key i, value j], fp32 always: the rwkv package's own CPU orientation (a state-tuned
        # file's time_state is [h, value, key] and is transposed at load, as the package does)
        return [StateEntry("att_kv", (cfg.n_head, cfg.head_size, cfg.head_size), F32)]

    def __init__(self, cfg: RWKV6Config, layer: int):
        C, A, dt = cfg.n_embd, cfg.dim_att, cfg.dtype
        self.H, self.N, self.A, self.dtype, self.ln_x_eps = cfg.n_head, cfg.head_size, A, dt, cfg.ln_x_eps
        for m in ("x", *MIXES):
            setattr(self, f"time_maa_{m}", nn.Parameter((C,), dt))
        self.maa_lora = DDLerp(C, cfg.dim_mix_lora, dt)
        self.time_decay = nn.Parameter((A,), F32)  # d, raw: w = exp(-exp(d + LoRA)) per token
        self.decay_lora = LoRA(C, cfg.dim_decay_lora, dt, act=op.tanh, out_features=A)
        self.time_faaaa = nn.Parameter((self.H, self.N), F32)  # bonus u, raw
        # r, k, v feed the fp32 scan: fp32 outputs (ChatRWKV's output_dtype=torch.float32)
        self.receptance = Linear(C, A, dt, out_dtype=F32)
        self.key = Linear(C, A, dt, out_dtype=F32)
        self.value = Linear(C, A, dt, out_dtype=F32)
        self.gate = Linear(C, A, dt)
        self.output = Linear(A, C, dt)
        self.ln_x_weight = nn.Parameter((A,), F32)
        self.ln_x_bias = nn.Parameter((A,), F32)

    def forward(self, xx: Tensor, sx: Tensor, st, ctx: dict) -> Tensor:
        T, H, N = xx.shape[0], self.H, self.N
        heads = lambda t: op.reshape(t, [T, H, N])  # (T, A) -> (T, H, N)
        dx = sx - xx
        m = self.maa_lora(xx, dx, self.time_maa_x)
        x = {k: xx + dx * (getattr(self, f"time_maa_{k}") + m[k]) for k in MIXES}
        r, k, v = (heads(lin(x[n])) for lin, n in ((self.receptance, "r"), (self.key, "k"), (self.value, "v")))
        g = op.silu(self.gate(x["g"]))
        w = op.exp(op.negative(op.exp(self.time_decay + self.decay_lora(x["w"]))))  # fp32, in (0, 1)
        # y = r (u k v^T + S) with S before the token; S <- diag(w_t) S + k v^T
        y, s = ops.wkv6(r, k, v, heads(w), self.time_faaaa, st.get("att_kv"), st.seg.seg_last)
        st.put("att_kv", s)
        y = op.group_norm(op.reshape(y, [T, self.A]), H, self.ln_x_weight, self.ln_x_bias,
                          eps=self.ln_x_eps, channel_axis=1, axes=[])
        if self.dtype != F32:
            y = y.astype(self.dtype)
        return self.output(y * g)


class ChannelMix(nn.Module):
    """RWKV-6 channel mix: ``sigmoid(R x_r) * V relu(K x_k)^2`` with RWKV-6's lerp."""

    def __init__(self, cfg: RWKV6Config):
        C, F, dt = cfg.n_embd, cfg.dim_ffn, cfg.dtype
        self.time_maa_k = nn.Parameter((C,), dt)
        self.time_maa_r = nn.Parameter((C,), dt)
        self.key = Linear(C, F, dt)
        self.receptance = Linear(C, C, dt)
        self.value = ffn_value(cfg)

    def forward(self, xx: Tensor, sx: Tensor) -> Tensor:
        r = op.sigmoid(self.receptance(lerp(xx, sx, self.time_maa_r)))
        k = op.square(op.relu(self.key(lerp(xx, sx, self.time_maa_k))))
        return r * self.value(k)


class RWKV6(RNNLanguageModel):
    """RWKV-6 language model with the MLC-style RNN interface."""

    TimeMix = TimeMix
    ChannelMix = ChannelMix


MODEL = RWKV6
