"""RWKV-6 in float64 numpy on the library's parameters, its scan through the WKV6 kernel's twin."""
from __future__ import annotations

import numpy as np

from tir_kernels.wkv6 import wkv6_numpy

from ...reference import NumpyRWKV, group_norm, lerp, sigmoid
from .names import MIXES


class NumpyRWKV6(NumpyRWKV):
    def time_mix_state(self):
        H, N = self.cfg["dim_att"] // self.cfg["head_size"], self.cfg["head_size"]
        return {"att_kv": np.zeros((H, N, N))}

    def time_mix(self, b, xx, sx, st, ctx):
        c, p = self.cfg, self.p
        att = b + "att."
        H, N = c["dim_att"] // c["head_size"], c["head_size"]
        T = xx.shape[0]
        dx = sx - xx
        h = np.tanh((xx + dx * p[att + "time_maa_x"]) @ p[att + "maa_lora.down"].T)  # (T, 5 D)
        hs = np.split(h, len(MIXES), axis=1)
        x = {m: xx + dx * (p[att + f"time_maa_{m}"] + hm @ p[att + f"maa_lora.up_{m}"].T)
             for m, hm in zip(MIXES, hs)}
        heads = lambda t: t.reshape(T, H, N)
        r, k, v = (heads(self.lin(att + name, x[m])) for name, m in (("receptance", "r"), ("key", "k"), ("value", "v")))
        g = self.lin(att + "gate", x["g"])
        g = g * sigmoid(g)
        d = p[att + "time_decay"] + np.tanh(x["w"] @ p[att + "decay_lora.down"].T) @ p[att + "decay_lora.up"].T
        y, s = wkv6_numpy(r, k, v, heads(np.exp(-np.exp(d))), p[att + "time_faaaa"], st["att_kv"])
        y = group_norm(np.asarray(y, np.float64).reshape(T, H * N), H, p[att + "ln_x_weight"],
                       p[att + "ln_x_bias"], c["ln_x_eps"])
        return self.lin(att + "output", y * g), {"att_kv": np.asarray(s, np.float64)}

    def channel_mix(self, b, xx, sx):
        p = self.p
        r = sigmoid(self.lin(b + "ffn.receptance", lerp(xx, sx, p[b + "ffn.time_maa_r"])))
        k = np.square(np.maximum(self.lin(b + "ffn.key", lerp(xx, sx, p[b + "ffn.time_maa_k"])), 0))
        return r * self.lin(b + "ffn.value", k)


REFERENCE = NumpyRWKV6
