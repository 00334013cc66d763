"""Random RWKV-6 checkpoints: RWKV-LM's x060 initialisation (``RWKV_Tmix_x060``: ddlerp ramps,
decay speeds spread over [-6, -1], bonus ramps) with the ddlerp and decay LoRA factors drawn as a
trained model has them rather than at their zero init, so that every path of the math carries
signal."""
from __future__ import annotations

import numpy as np

from ...testing.random_weights import RandomInit, rwkv_tensors


def random_tensors(n_layer: int = 2, n_embd: int = 128, vocab_size: int = 1024, head_size: int = 64,
                   dim_att: int | None = None, dim_ffn: int | None = None, dim_mix_lora: int = 32,
                   dim_decay_lora: int = 64, time_state: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """Canonical (BlinkDL) RWKV-6 tensors in float32; ``time_state`` adds a state-tuned initial
    state per layer ([H, value, key], as state tuning writes it)."""
    init = RandomInit(seed, n_embd)
    rng = init.rng
    C, A, N = n_embd, dim_att or n_embd, head_size
    H = A // N
    F = dim_ffn or int(C * 3.5) // 32 * 32
    n = np.arange(A)

    def time_mix(i, r01, r1_0):
        # maa is the weight of the *previous* token (x + (x_prev - x) maa): 1 - BlinkDL's ramps
        t = {f"time_maa_{m}": 1.0 - init.time_mix(r1_0 * p, offset)
             for m, p, offset in (("x", 1.0, 0.0), ("w", 1.0, 0.0), ("k", 1.0, 0.0), ("v", 1.0, 0.3 * r01),
                                  ("r", 0.5, 0.0), ("g", 0.5, 0.0))}
        t["time_maa_w1"] = init.lin(5 * dim_mix_lora, C, 1.0).T.copy()  # (C, 5 D)
        t["time_maa_w2"] = np.stack([init.lin(C, dim_mix_lora, 0.1).T for _ in range(5)])  # (5, D, C)
        decay = -6 + 5 * (n / (A - 1)) ** (0.7 + 1.3 * r01) + 0.1 * rng.standard_normal(A)
        t["time_decay"] = decay.reshape(1, 1, A).astype(np.float32)
        t["time_decay_w1"] = init.lin(dim_decay_lora, C, 1.0).T.copy()  # (C, D)
        t["time_decay_w2"] = init.lin(A, dim_decay_lora, 0.5).T.copy()  # (D, A)
        bonus = r01 * (1 - n / (A - 1)) + ((n + 1) % 3 - 1) * 0.1 + 0.1 * rng.standard_normal(A)
        t["time_faaaa"] = bonus.reshape(H, N).astype(np.float32)
        t["receptance.weight"] = init.lin(A, C)
        t["key.weight"] = init.lin(A, C, 0.5)
        t["value.weight"] = init.lin(A, C)
        t["gate.weight"] = init.lin(A, C)
        t["output.weight"] = init.lin(C, A, 0.5)
        t["ln_x.weight"] = (((1 + i) / n_layer) ** 0.7 + 0.1 * rng.standard_normal(A)).astype(np.float32)
        t["ln_x.bias"] = (0.05 * rng.standard_normal(A)).astype(np.float32)
        if time_state:  # its own stream: the other weights equal the untuned checkpoint's
            tuning = np.random.default_rng([seed, i, 6])
            t["time_state"] = (0.3 * tuning.standard_normal((H, N, N))).astype(np.float32)
        return t

    def channel_mix(i, r01, r1_0):
        return {"time_maa_k": 1.0 - init.time_mix(r1_0), "time_maa_r": 1.0 - init.time_mix(r1_0),
                "key.weight": init.lin(F, C), "receptance.weight": init.lin(C, C),
                "value.weight": init.lin(C, F, 0.5)}

    return rwkv_tensors(init, n_layer, C, vocab_size, time_mix, channel_mix)


# The test checkpoint of the shared contract: no two of L, C, H, N, F, V and the two LoRA widths
# coincide, and the widths are not the training defaults (32 / 64).
TEST_SHAPE = dict(n_layer=3, n_embd=192, vocab_size=1300, head_size=64, dim_ffn=608, dim_mix_lora=24,
                  dim_decay_lora=40, seed=6)
STATE_ATOL = {"att_x": 1e-5, "att_kv": 1e-4, "ffn_x": 1e-5}  # against the rwkv package
CHATRWKV = {}  # how the rwkv package runs it (its RWKV class, like v4 / v5)
