"""Random RWKV-7 checkpoints: RWKV-LM's x070 initialisation (``RWKV-v7/train_temp/src/model.py``:
lerp ramps, the decay bias from -6 to 0 plus a per-head zigzag, a0 / v0 / k_k / k_a / r_k
offsets) with the LoRA factors and the FFN value drawn as a trained model has them rather than
at their zero init, so that every path of the math carries signal."""
from __future__ import annotations

import numpy as np

from ...testing.random_weights import RandomInit, rwkv_tensors


def random_tensors(n_layer: int = 2, n_embd: int = 128, vocab_size: int = 1024, head_size: int = 64,
                   dim_ffn: int | None = None, dim_decay_lora: int = 64, dim_a_lora: int = 64,
                   dim_v_lora: int = 32, dim_gate_lora: int = 128, seed: int = 0) -> dict[str, np.ndarray]:
    """Canonical (BlinkDL) RWKV-7 tensors in float32 (layer 0 keeps its unused v0/v1/v2, as
    BlinkDL's files do)."""
    init = RandomInit(seed, n_embd)
    rng = init.rng
    C, N = n_embd, head_size
    H = C // N
    F = dim_ffn or 4 * C
    n = np.arange(C)
    linear = n / (C - 1) - 0.5
    zigzag = ((n % N) - (N - 1) / 2) / ((N - 1) / 2)
    zigzag = zigzag * np.abs(zigzag)
    vec = lambda x: (x + 0.02 * rng.standard_normal(C)).reshape(1, 1, C).astype(np.float32)

    def lora(D: int, gain_down: float, gain_up: float):
        return init.lin(D, C, gain_down).T.copy(), init.lin(C, D, gain_up).T.copy()  # (C, D), (D, C)

    def time_mix(i, r01, r1_0):
        t = {f"x_{m}": vec(1.0 - np.power(init.ramp, p * r1_0))
             for m, p in (("r", 0.2), ("w", 0.9), ("k", 0.7), ("v", 0.7), ("a", 0.9), ("g", 0.2))}
        decay = -6 + 6 * (n / (C - 1)) ** (1 + r01 ** 0.3)
        t["w0"] = vec(decay + 0.5 + zigzag * 2.5)
        t["w1"], t["w2"] = lora(dim_decay_lora, 1.0, 0.5)
        t["a0"] = vec(-0.19 + zigzag * 0.3 + linear * 0.4)
        t["a1"], t["a2"] = lora(dim_a_lora, 1.0, 0.5)
        t["v0"] = vec(0.73 - linear * 0.4)
        t["v1"], t["v2"] = lora(dim_v_lora, 1.0, 0.5)
        t["g1"], t["g2"] = lora(dim_gate_lora, 1.0, 0.5)
        t["k_k"] = vec(0.71 - linear * 0.1)
        t["k_a"] = vec(np.full(C, 1.02))
        t["r_k"] = (-0.04 + 0.1 * rng.standard_normal((H, N))).astype(np.float32)
        t["receptance.weight"] = init.lin(C, C)
        t["key.weight"] = init.lin(C, C)
        t["value.weight"] = init.lin(C, C)
        t["output.weight"] = init.lin(C, C, 0.5)
        t["ln_x.weight"] = (((1 + i) / n_layer) ** 0.7 + 0.1 * rng.standard_normal(C)).astype(np.float32)
        t["ln_x.bias"] = (0.05 * rng.standard_normal(C)).astype(np.float32)
        return t

    def channel_mix(i, r01, r1_0):
        return {"x_k": vec(1.0 - np.power(init.ramp, r1_0 ** 4)),
                "key.weight": init.lin(F, C), "value.weight": init.lin(C, F, 0.5)}

    return rwkv_tensors(init, n_layer, C, vocab_size, time_mix, channel_mix)


# The test checkpoint of the shared contract: no two of L, C, H, N, F, V and the four LoRA widths
# coincide, and the widths follow no training formula.
TEST_SHAPE = dict(n_layer=3, n_embd=192, vocab_size=1100, head_size=64, dim_ffn=736, dim_decay_lora=40,
                  dim_a_lora=24, dim_v_lora=56, dim_gate_lora=72, seed=7)
STATE_ATOL = {"att_x": 1e-5, "att_kv": 1e-4, "ffn_x": 1e-5}  # against the rwkv package
CHATRWKV = {"v7": True}  # how the rwkv package runs it (RWKV_x070, RWKV_V7_ON=1)
