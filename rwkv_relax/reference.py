"""A float64 numpy RWKV, written from ChatRWKV's math, on the compiled model's own parameters
(names and load-time transforms as the library uses them). Each version adds its time mix (and
channel mix, where it differs) in ``versions/<v>/reference.py``, built on the numpy twins of its
kernels.

Used to check that a compiled model implements its quantization scheme exactly (feed it the
de-quantized weights) and by ``debug.py`` to compare layer by layer.
"""
from __future__ import annotations

import numpy as np

from .quantization import group_quant as gq


def dequantized_params(params: dict[str, np.ndarray], bits: int | None, group: int = 32) -> dict:
    """Library parameters -> float64 parameters: ``X.q_weight``/``X.q_scale`` become ``X.weight``."""
    out = {}
    for name, value in params.items():
        base, _, suffix = name.rpartition(".")
        if suffix in ("q_weight", "q_weight_t"):  # _t: hidden-major, quantized along its rows too
            t = suffix[len("q_weight"):]
            out[f"{base}.weight{t}"] = gq.dequantize(value, params[f"{base}.q_scale{t}"], bits,
                                                     group).astype(np.float64)
        elif suffix not in ("q_scale", "q_scale_t"):
            out[name] = np.asarray(value, dtype=np.float64)
    return out


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def group_norm(x, groups, w, b, eps):
    T, C = x.shape
    g = x.reshape(T, groups, C // groups)  # (T, C) -> (T, H, N)
    mu = g.mean(-1, keepdims=True)
    var = ((g - mu) ** 2).mean(-1, keepdims=True)
    return ((g - mu) / np.sqrt(var + eps)).reshape(T, C) * w + b


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def shifted(xx, prev):
    """Each row's predecessor, ``prev`` for the first: (T, C), (C,) -> (T, C)."""
    return np.concatenate([prev[None], xx[:-1]], axis=0)


def mix(xx, sx, m):
    """RWKV-4/5 token-shift interpolation ``xx*m + sx*(1-m)``."""
    return xx * m + sx * (1 - m)


def lerp(xx, sx, m):
    """RWKV-6/7 token-shift interpolation ``xx + (sx - xx) * m``."""
    return xx + (sx - xx) * m


class NumpyRWKV:
    """``forward(tokens, state) -> (logits, state, trace)``; ``trace`` holds, per layer, the ln1
    output and the time-mix and channel-mix outputs (for per-layer debugging). State entries carry
    the library's names."""

    def __init__(self, cfg: dict, params: dict[str, np.ndarray]):
        self.cfg, self.p = cfg, params

    # ---- what a version provides --------------------------------------------------------------
    def time_mix_state(self) -> dict[str, np.ndarray]:
        """A fresh layer's time-mix entries (besides the token shift ``att_x``)."""
        raise NotImplementedError

    def time_mix(self, b: str, xx, sx, st: dict, ctx: dict):
        """Layer prefix ``b`` ("blocks.i."): (output (T, C), {new state entries})."""
        raise NotImplementedError

    def channel_mix(self, b: str, xx, sx):
        """RWKV-4/5: ``sigmoid(R x_r) * V relu(K x_k)^2``."""
        p = self.p
        r = sigmoid(self.lin(b + "ffn.receptance", mix(xx, sx, p[b + "ffn.time_mix_r"])))
        k = np.square(np.maximum(self.lin(b + "ffn.key", mix(xx, sx, p[b + "ffn.time_mix_k"])), 0))
        return r * self.lin(b + "ffn.value", k)

    # ---- shared ---------------------------------------------------------------------------------
    def lin(self, name, x):
        if name + ".weight_t" in self.p:  # stored hidden-major (the channel mix's value)
            return x @ self.p[name + ".weight_t"]
        return x @ self.p[name + ".weight"].T

    def new_state(self) -> list[dict]:
        C = self.cfg["n_embd"]
        return [{"att_x": np.zeros(C), **self.time_mix_state(), "ffn_x": np.zeros(C)}
                for _ in range(self.cfg["n_layer"])]

    def forward(self, tokens, state=None):
        c, p = self.cfg, self.p
        eps = c.get("layer_norm_eps", 1e-5)
        state = [dict(s) for s in (state or self.new_state())]
        x = p["embeddings.weight"][np.asarray(tokens)]
        trace, ctx = [], {}
        for i in range(c["n_layer"]):
            b, st = f"blocks.{i}.", state[i]
            xx = layer_norm(x, p[b + "ln1.weight"], p[b + "ln1.bias"], eps)
            att, carried = self.time_mix(b, xx, shifted(xx, st["att_x"]), st, ctx)
            st.update(carried, att_x=xx[-1])
            x = x + att
            xx2 = layer_norm(x, p[b + "ln2.weight"], p[b + "ln2.bias"], eps)
            ffn = self.channel_mix(b, xx2, shifted(xx2, st["ffn_x"]))
            st["ffn_x"] = xx2[-1]
            x = x + ffn
            trace.append({"ln1": xx, "att": att, "ffn": ffn})
            if c.get("rescale_every") and (i + 1) % c["rescale_every"] == 0:
                x = x / 2
        h = layer_norm(x[-1], p["ln_out.weight"], p["ln_out.bias"], eps)
        return h @ p["head.weight"].T, state, trace
