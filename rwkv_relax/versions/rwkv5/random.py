"""Random RWKV-5.2 checkpoints: RWKV-LM's v5 initialisation (decay speeds spread over [-6, -1],
bonus ramps) with trained-model-like magnitudes."""
from __future__ import annotations

import numpy as np

from ...testing.random_weights import RandomInit, ffn_v4, rwkv_tensors


def random_tensors(n_layer: int = 2, n_embd: int = 128, vocab_size: int = 1024, head_size: int = 64,
                  dim_ffn: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Canonical (BlinkDL) RWKV-5.2 tensors in float32."""
    init = RandomInit(seed, n_embd)
    rng = init.rng
    C, A, N = n_embd, n_embd, head_size
    H = A // N

    def time_mix(i, r01, r1_0):
        t = {f"time_mix_{m}": init.time_mix(r1_0 * p) for m, p in (("k", 1.0), ("v", 1.0), ("r", 0.5), ("g", 0.5))}
        n = np.arange(A)
        decay = -6 + 5 * (n / (A - 1)) ** (0.7 + 1.3 * r01) + 0.1 * rng.standard_normal(A)
        t["time_decay"] = decay.reshape(H, N).astype(np.float32)
        bonus = r01 * (1 - n / (A - 1)) + ((n + 1) % 3 - 1) * 0.1 + 0.1 * rng.standard_normal(A)
        t["time_faaaa"] = bonus.reshape(H, N).astype(np.float32)
        t["receptance.weight"] = init.lin(A, C)
        t["key.weight"] = init.lin(A, C, 0.5)
        t["value.weight"] = init.lin(A, C)
        t["gate.weight"] = init.lin(A, C)
        t["output.weight"] = init.lin(C, A, 0.5)
        t["ln_x.weight"] = (((1 + i) / n_layer) ** 0.7 + 0.1 * rng.standard_normal(A)).astype(np.float32)
        t["ln_x.bias"] = (0.05 * rng.standard_normal(A)).astype(np.float32)
        return t

    F = dim_ffn or int(C * 3.5) // 32 * 32
    return rwkv_tensors(init, n_layer, C, vocab_size, time_mix, lambda i, r01, r1_0: ffn_v4(init, C, F, r1_0))


# The test checkpoint of the shared contract: no two of H, N, C, F, V coincide, so a dropped
# transpose between two equal dims cannot go unnoticed.
TEST_SHAPE = dict(n_layer=3, n_embd=192, vocab_size=1536, head_size=64, dim_ffn=672, seed=5)
STATE_ATOL = {"att_x": 1e-5, "att_kv": 1e-4, "ffn_x": 1e-5}  # against the rwkv package
CHATRWKV = {}  # how the rwkv package runs it
