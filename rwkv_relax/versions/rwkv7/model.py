"""RWKV-7 ("Goose", x070) time mix and channel mix.

Follows ChatRWKV ``rwkv/model.py`` (``RWKV_x070_TMix_seq`` / ``_one``, ``RWKV_x070_CMix_*``) where
rounding matters. Parameters hold the load-time transformed weights (``names.py``): ln0 folded
into the embedding, vectors flat, the LoRA factors as linear-layer weights (``down`` (D, C),
``up`` (C, D)). Letters as in ``models/layers.py``, plus H heads of N channels (C = H * N) and
the LoRA widths D.

Per token, per head (S is [value i, key j], fp32)::

    w  = exp(-e^-0.5 sigmoid(w0 + tanh(x_w W1) W2))       decay in (0.545, 1), fp32
    a  = sigmoid(a0 + x_a A1 A2)                           in-context learning rate
    kk = normalize(k * k_k) per head;  k <- k * (1 + (a - 1) * k_a)
    v  <- v + (v_first - v) * sigmoid(v0 + x_v V1 V2)      layers >= 1; v_first = layer 0's v
    S  <- S diag(w) - (S kk)(kk * a)^T + v k^T;  y = S r   (output after the update)
    out = W_o((GroupNorm(y) + (sum r * k * r_k) v) * g),   g = sigmoid(x_g G1) G2
"""
from __future__ import annotations

from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from ...models import ops
from ...models.base import RNNLanguageModel
from ...models.layers import Linear, LoRA, ffn_value, lerp
from ...models.state import StateEntry
from .config import RWKV7Config

F32 = "float32"
DECAY_SCALE = 0.606531  # exp(-0.5), the literal the reference uses


class TimeMix(nn.Module):
    """Six token-shift lerps, r/k/v projections, the decay / learning-rate / value-residual / gate
    LoRAs, the WKV7 scan, GroupNorm ln_x plus the per-head bonus, gate, output."""

    @staticmethod
    def state_entries(cfg: RWKV7Config) -> list[StateEntry]:
        # S[h, value i, key j], fp32 always: the rwkv package's own orientation (and ggml's)
        return [StateEntry("att_kv", (cfg.n_head, cfg.head_size, cfg.head_size), F32)]

    def __init__(self, cfg: RWKV7Config, layer: int):
        C, dt = cfg.n_embd, cfg.dtype
        self.layer, self.H, self.N, self.dtype = layer, cfg.n_head, cfg.head_size, dt
        self.ln_x_eps, self.l2_eps = cfg.ln_x_eps, cfg.l2_norm_eps
        for m in ("r", "w", "k", "v", "a", "g"):
            setattr(self, f"x_{m}", nn.Parameter((C,), dt))
        self.w0 = nn.Parameter((C,), F32)
        self.w_lora = LoRA(C, cfg.dim_decay_lora, dt, act=op.tanh)
        self.a0 = nn.Parameter((C,), F32)
        self.a_lora = LoRA(C, cfg.dim_a_lora, dt)
        if layer > 0:  # layer 0's value is v_first itself
            self.v0 = nn.Parameter((C,), F32)
            self.v_lora = LoRA(C, cfg.dim_v_lora, dt)
        self.g_lora = LoRA(C, cfg.dim_gate_lora, dt, act=op.sigmoid, out_dtype=dt)
        self.k_k = nn.Parameter((C,), F32)
        self.k_a = nn.Parameter((C,), F32)
        self.r_k = nn.Parameter((cfg.n_head, cfg.head_size), F32)
        # r, k, v feed the fp32 scan: fp32 outputs (fp32 accumulation in every mode)
        self.receptance = Linear(C, C, dt, out_dtype=F32)
        self.key = Linear(C, C, dt, out_dtype=F32)
        self.value = Linear(C, C, dt, out_dtype=F32)
        self.output = Linear(C, C, dt)
        self.ln_x_weight = nn.Parameter((C,), F32)
        self.ln_x_bias = nn.Parameter((C,), F32)

    def forward(self, xx: Tensor, sx: Tensor, st, ctx: dict) -> Tensor:
        T, H, N = xx.shape[0], self.H, self.N
        heads = lambda t: op.reshape(t, [T, H, N])  # (T, C) -> (T, H, N)
        r = self.receptance(lerp(xx, sx, self.x_r))
        k = self.key(lerp(xx, sx, self.x_k))
        v = self.value(lerp(xx, sx, self.x_v))
        w = op.exp(op.sigmoid(self.w0 + self.w_lora(lerp(xx, sx, self.x_w))) * -DECAY_SCALE)
        a = op.sigmoid(self.a0 + self.a_lora(lerp(xx, sx, self.x_a)))
        g = self.g_lora(lerp(xx, sx, self.x_g))
        kk = heads(k * self.k_k)
        norm = op.sqrt(op.sum(op.square(kk), axis=-1, keepdims=True))  # (T, H, 1)
        kk = kk / op.maximum(norm, op.full([1], self.l2_eps, F32))  # F.normalize
        k = k * (1.0 + (a - 1.0) * self.k_a)
        if self.layer == 0:
            ctx["v_first"] = v
        else:  # the value residual: toward layer 0's value (fp32 in every layer)
            v = v + (ctx["v_first"] - v) * op.sigmoid(self.v0 + self.v_lora(lerp(xx, sx, self.x_v)))
        r, k, v, w = heads(r), heads(k), heads(v), heads(w)
        # S <- S diag(w) + (S a) b^T + v k^T with a = -kk, b = kk * a; y = S r
        y, s = ops.wkv7(r, w, k, v, kk * -1.0, kk * heads(a), st.get("att_kv"), st.seg.seg_last)
        st.put("att_kv", s)
        y = op.group_norm(op.reshape(y, [T, H * N]), H, self.ln_x_weight, self.ln_x_bias,
                          eps=self.ln_x_eps, channel_axis=1, axes=[])
        bonus = op.sum(r * k * self.r_k, axis=-1, keepdims=True) * v  # (T, H, 1) * (T, H, N)
        y = y + op.reshape(bonus, [T, H * N])
        if self.dtype != F32:
            y = y.astype(self.dtype)
        return self.output(y * g)


class ChannelMix(nn.Module):
    """RWKV-7 channel mix: ``V relu(K x_k)^2``, no receptance."""

    def __init__(self, cfg: RWKV7Config):
        C, F, dt = cfg.n_embd, cfg.dim_ffn, cfg.dtype
        self.x_k = nn.Parameter((C,), dt)
        self.key = Linear(C, F, dt)
        self.value = ffn_value(cfg)

    def forward(self, xx: Tensor, sx: Tensor) -> Tensor:
        return self.value(op.square(op.relu(self.key(lerp(xx, sx, self.x_k)))))


class RWKV7(RNNLanguageModel):
    """RWKV-7 language model with the MLC-style RNN interface."""

    TimeMix = TimeMix
    ChannelMix = ChannelMix


MODEL = RWKV7
