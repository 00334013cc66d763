"""A float64 numpy model of RWKV, written from ChatRWKV's math, on the compiled model's own
parameters (names and load-time transforms as the library uses them).

Used to check that a compiled model implements its quantization scheme exactly (feed it the
de-quantized weights) and by tools/dump_intermediate.py to compare layer by layer.
"""
from __future__ import annotations

import numpy as np

from ..quantization import group_quant as gq


def dequantized_params(params: dict[str, np.ndarray], bits: int | None, group: int = 32) -> dict:
    """Library parameters -> float64 parameters: ``X.q_weight``/``X.q_scale`` become ``X.weight``."""
    out = {}
    for name, value in params.items():
        if name.endswith(".q_weight"):
            base = name[: -len("q_weight")]
            out[base + "weight"] = gq.dequantize(value, params[base + "q_scale"], bits, group).astype(np.float64)
        elif not name.endswith(".q_scale"):
            out[name] = np.asarray(value, dtype=np.float64)
    return out


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def group_norm(x, groups, w, b, eps):
    T, C = x.shape
    g = x.reshape(T, groups, C // groups)
    mu = g.mean(-1, keepdims=True)
    var = ((g - mu) ** 2).mean(-1, keepdims=True)
    return ((g - mu) / np.sqrt(var + eps)).reshape(T, C) * w + b


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def shifted(xx, prev):
    return np.concatenate([prev[None], xx[:-1]], axis=0)


class NumpyRWKV:
    """``forward(tokens, state) -> (logits, state, trace)``; ``trace`` holds, per layer, the
    ln1 output and the time-mix and channel-mix outputs (for per-layer debugging)."""

    def __init__(self, model_type: str, cfg: dict, params: dict[str, np.ndarray]):
        self.kind, self.cfg, self.p = model_type, cfg, params

    def new_state(self) -> list[dict]:
        c = self.cfg
        C, L = c["n_embd"], c["n_layer"]
        if self.kind == "rwkv5":
            H, N = c["dim_att"] // c["head_size"], c["head_size"]
            return [{"att_x": np.zeros(C), "att_kv": np.zeros((H, N, N)), "ffn_x": np.zeros(C)}
                    for _ in range(L)]
        A = c["dim_att"]
        return [{"att_x": np.zeros(C), "aa": np.zeros(A), "bb": np.zeros(A), "pp": np.full(A, -1e30),
                 "ffn_x": np.zeros(C)} for _ in range(L)]

    def _lin(self, name, x):
        return x @ self.p[name + ".weight"].T

    def _time_mix_v5(self, b, xx, sx, st):
        c, p = self.cfg, self.p
        H, N = c["dim_att"] // c["head_size"], c["head_size"]
        mix = lambda m: xx * p[b + f"att.time_mix_{m}"] + sx * (1 - p[b + f"att.time_mix_{m}"])
        T = xx.shape[0]
        r = self._lin(b + "att.receptance", mix("r")).reshape(T, H, N)
        k = self._lin(b + "att.key", mix("k")).reshape(T, H, N)
        v = self._lin(b + "att.value", mix("v")).reshape(T, H, N)
        g = self._lin(b + "att.gate", mix("g"))
        g = g * sigmoid(g)
        w, u, s = p[b + "att.time_decay"], p[b + "att.time_faaaa"], st["att_kv"].copy()
        out = np.zeros((T, H, N))
        for t in range(T):
            kv = k[t][:, :, None] * v[t][:, None, :]
            out[t] = np.einsum("hi,hij->hj", r[t], u[:, :, None] * kv + s)
            s = w[:, :, None] * s + kv
        out = group_norm(out.reshape(T, H * N), H, p[b + "att.ln_x_weight"], p[b + "att.ln_x_bias"],
                         c["ln_x_eps"])
        return self._lin(b + "att.output", out * g), {"att_kv": s}

    def _time_mix_v4(self, b, xx, sx, st):
        p = self.p
        mix = lambda m: xx * p[b + f"att.time_mix_{m}"] + sx * (1 - p[b + f"att.time_mix_{m}"])
        r = sigmoid(self._lin(b + "att.receptance", mix("r")))
        k = self._lin(b + "att.key", mix("k"))
        v = self._lin(b + "att.value", mix("v"))
        w, u = p[b + "att.time_decay"], p[b + "att.time_first"]
        aa, bb, pp = st["aa"].copy(), st["bb"].copy(), st["pp"].copy()
        wkv = np.zeros_like(k)
        for t in range(k.shape[0]):
            ww = u + k[t]
            q = np.maximum(pp, ww)
            e1, e2 = np.exp(pp - q), np.exp(ww - q)
            wkv[t] = (e1 * aa + e2 * v[t]) / (e1 * bb + e2)
            ww = w + pp
            q = np.maximum(ww, k[t])
            e1, e2 = np.exp(ww - q), np.exp(k[t] - q)
            aa, bb, pp = e1 * aa + e2 * v[t], e1 * bb + e2, q
        return self._lin(b + "att.output", r * wkv), {"aa": aa, "bb": bb, "pp": pp}

    def forward(self, tokens, state=None):
        c, p = self.cfg, self.p
        eps = c.get("layer_norm_eps", 1e-5)
        state = [dict(s) for s in (state or self.new_state())]
        x = p["embeddings.weight"][np.asarray(tokens)]
        trace = []
        time_mix = self._time_mix_v5 if self.kind == "rwkv5" else self._time_mix_v4
        for i in range(c["n_layer"]):
            b, st = f"blocks.{i}.", state[i]
            xx = layer_norm(x, p[b + "ln1.weight"], p[b + "ln1.bias"], eps)
            att, carried = time_mix(b, xx, shifted(xx, st["att_x"]), st)
            st.update(carried, att_x=xx[-1])
            x = x + att
            xx2 = layer_norm(x, p[b + "ln2.weight"], p[b + "ln2.bias"], eps)
            sx2 = shifted(xx2, st["ffn_x"])
            mix = lambda m: xx2 * p[b + f"ffn.time_mix_{m}"] + sx2 * (1 - p[b + f"ffn.time_mix_{m}"])
            ffn = sigmoid(self._lin(b + "ffn.receptance", mix("r"))) * self._lin(
                b + "ffn.value", np.square(np.maximum(self._lin(b + "ffn.key", mix("k")), 0)))
            st["ffn_x"] = xx2[-1]
            x = x + ffn
            trace.append({"ln1": xx, "att": att, "ffn": ffn})
            if c.get("rescale_every") and (i + 1) % c["rescale_every"] == 0:
                x = x / 2
        h = layer_norm(x[-1], p["ln_out.weight"], p["ln_out.bias"], eps)
        return h @ p["head.weight"].T, state, trace
