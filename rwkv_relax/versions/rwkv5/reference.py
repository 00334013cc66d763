"""RWKV-5.2 in float64 numpy on the library's parameters, its scan through the WKV5 kernel's twin."""
from __future__ import annotations

import numpy as np

from tir_kernels.wkv5 import wkv5_numpy

from ...reference import NumpyRWKV, group_norm, mix


class NumpyRWKV5(NumpyRWKV):
    def time_mix_state(self):
        H, N = self.cfg["dim_att"] // self.cfg["head_size"], self.cfg["head_size"]
        return {"att_kv": np.zeros((H, N, N))}

    def time_mix(self, b, xx, sx, st, ctx):
        c, p = self.cfg, self.p
        H, N = c["dim_att"] // c["head_size"], c["head_size"]
        T = xx.shape[0]
        m = lambda name: mix(xx, sx, p[b + f"att.time_mix_{name}"])
        r = self.lin(b + "att.receptance", m("r")).reshape(T, H, N)  # (T, A) -> (T, H, N)
        k = self.lin(b + "att.key", m("k")).reshape(T, H, N)
        v = self.lin(b + "att.value", m("v")).reshape(T, H, N)
        g = self.lin(b + "att.gate", m("g"))
        g = g * (1 / (1 + np.exp(-g)))
        out, s = wkv5_numpy(r, k, v, p[b + "att.time_decay"], p[b + "att.time_faaaa"], st["att_kv"])
        out = group_norm(out.reshape(T, H * N).astype(np.float64), H, p[b + "att.ln_x_weight"],
                         p[b + "att.ln_x_bias"], c["ln_x_eps"])
        return self.lin(b + "att.output", out * g), {"att_kv": s.astype(np.float64)}


REFERENCE = NumpyRWKV5
