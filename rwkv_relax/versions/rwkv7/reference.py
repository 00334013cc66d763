"""RWKV-7 in float64 numpy on the library's parameters, its scan through the WKV7 kernel's twin."""
from __future__ import annotations

import numpy as np

from tir_kernels.wkv7 import wkv7_numpy

from ...reference import NumpyRWKV, group_norm, lerp, sigmoid
from .model import DECAY_SCALE


class NumpyRWKV7(NumpyRWKV):
    def time_mix_state(self):
        H, N = self.cfg["n_embd"] // self.cfg["head_size"], self.cfg["head_size"]
        return {"att_kv": np.zeros((H, N, N))}

    def lora(self, name, x, act=None):
        h = x @ self.p[name + ".down"].T
        return (act(h) if act else h) @ self.p[name + ".up"].T

    def time_mix(self, b, xx, sx, st, ctx):
        c, p = self.cfg, self.p
        N = c["head_size"]
        T, C = xx.shape
        H = C // N
        att = b + "att."
        x = {m: lerp(xx, sx, p[att + f"x_{m}"]) for m in ("r", "w", "k", "v", "a", "g")}
        r, k, v = (self.lin(att + name, x[m]) for name, m in (("receptance", "r"), ("key", "k"), ("value", "v")))
        w = np.exp(-DECAY_SCALE * sigmoid(p[att + "w0"] + self.lora(att + "w_lora", x["w"], np.tanh)))
        a = sigmoid(p[att + "a0"] + self.lora(att + "a_lora", x["a"]))
        g = self.lora(att + "g_lora", x["g"], sigmoid)
        kk = (k * p[att + "k_k"]).reshape(T, H, N)
        kk = kk / np.maximum(np.linalg.norm(kk, axis=-1, keepdims=True), c.get("l2_norm_eps", 1e-12))
        k = k * (1 + (a - 1) * p[att + "k_a"])
        if b == "blocks.0.":
            ctx["v_first"] = v
        else:
            v = v + (ctx["v_first"] - v) * sigmoid(p[att + "v0"] + self.lora(att + "v_lora", x["v"]))
        heads = lambda t: t.reshape(T, H, N)
        y, s = wkv7_numpy(heads(r), heads(w), heads(k), heads(v), -kk, kk * heads(a), st["att_kv"])
        y = group_norm(np.asarray(y, np.float64).reshape(T, C), H, p[att + "ln_x_weight"], p[att + "ln_x_bias"],
                       c["ln_x_eps"])
        y = y + ((heads(r) * heads(k) * p[att + "r_k"]).sum(-1, keepdims=True) * heads(v)).reshape(T, C)
        return self.lin(att + "output", y * g), {"att_kv": np.asarray(s, np.float64)}

    def channel_mix(self, b, xx, sx):
        k = np.square(np.maximum(self.lin(b + "ffn.key", lerp(xx, sx, self.p[b + "ffn.x_k"])), 0))
        return self.lin(b + "ffn.value", k)


REFERENCE = NumpyRWKV7
