"""RWKV-4 in float64 numpy on the library's parameters, its scan through the WKV4 kernel's twin."""
from __future__ import annotations

import numpy as np

from tir_kernels.wkv4 import wkv4_numpy

from ...reference import NumpyRWKV, mix, sigmoid
from .model import FRESH_PP


class NumpyRWKV4(NumpyRWKV):
    def time_mix_state(self):
        A = self.cfg["dim_att"]
        return {"att_aa": np.zeros(A), "att_bb": np.zeros(A), "att_pp": np.full(A, FRESH_PP)}

    def time_mix(self, b, xx, sx, st, ctx):
        p = self.p
        m = lambda name: mix(xx, sx, p[b + f"att.time_mix_{name}"])
        r = sigmoid(self.lin(b + "att.receptance", m("r")))
        k = self.lin(b + "att.key", m("k"))
        v = self.lin(b + "att.value", m("v"))
        # the twin runs in float32, the kernel's precision (the max trick keeps exp in range)
        wkv, (aa, bb, pp) = wkv4_numpy(k, v, p[b + "att.time_decay"], p[b + "att.time_first"],
                                       (st["att_aa"], st["att_bb"], st["att_pp"]))
        return self.lin(b + "att.output", r * wkv.astype(np.float64)), {
            "att_aa": aa.astype(np.float64), "att_bb": bb.astype(np.float64), "att_pp": pp.astype(np.float64)}


REFERENCE = NumpyRWKV4
