"""Random RWKV-4 checkpoints: RWKV-LM's v4 initialisation (decay speeds spread over [-5, 3]), with
some keys large enough to need WKV4's max trick."""
from __future__ import annotations

import numpy as np

from ...testing.random_weights import RandomInit, ffn_v4, rwkv_tensors

# Every LARGE_KEY_EVERY-th key channel gets LARGE_KEY_GAIN times the usual key weights, so that some
# k reach ~100: past float32's exp limit (88.7), where only WKV4's max trick keeps a / b finite.
LARGE_KEY_EVERY, LARGE_KEY_GAIN = 8, 80.0


def random_tensors(n_layer: int = 2, n_embd: int = 128, vocab_size: int = 1024, dim_ffn: int | None = None,
                  seed: int = 0, dim_att: int | None = None) -> dict[str, np.ndarray]:
    """Canonical (BlinkDL) RWKV-4 tensors in float32, time mix as RWKV-LM's RWKV-4 init."""
    init = RandomInit(seed, n_embd)
    rng = init.rng
    C, A = n_embd, dim_att or n_embd

    def time_mix(i, r01, r1_0):
        h = np.arange(A)
        decay_speed = -5 + 8 * (h / (A - 1)) ** (0.7 + 1.3 * r01) + 0.1 * rng.standard_normal(A)
        zigzag = ((h + 1) % 3 - 1) * 0.5
        key = init.lin(A, C, 0.5)
        key[::LARGE_KEY_EVERY] *= LARGE_KEY_GAIN
        return {
            "time_mix_k": init.time_mix(r1_0), "time_mix_v": init.time_mix(r1_0, 0.3 * r01),
            "time_mix_r": init.time_mix(0.5 * r1_0),
            "time_decay": decay_speed.astype(np.float32),
            "time_first": (np.log(0.3) + zigzag + 0.1 * rng.standard_normal(A)).astype(np.float32),
            "key.weight": key,
            "value.weight": init.lin(A, C),
            "receptance.weight": init.lin(A, C),
            "output.weight": init.lin(C, A, 0.5),
        }

    F = dim_ffn or 4 * C
    return rwkv_tensors(init, n_layer, C, vocab_size, time_mix, lambda i, r01, r1_0: ffn_v4(init, C, F, r1_0))


# The test checkpoint of the shared contract: no two of C, A, F, V (nor L) coincide, so a dropped
# transpose between two equal dims cannot go unnoticed.
TEST_SHAPE = dict(n_layer=3, n_embd=96, dim_att=160, dim_ffn=352, vocab_size=700, seed=3)
# aa, bb are scaled by exp(-pp), so they inherit pp's rounding (pp ~ 100: a few float32 ulps)
STATE_ATOL = {"att_x": 1e-5, "att_aa": 1e-4, "att_bb": 1e-4, "att_pp": 1e-4, "ffn_x": 1e-5}
# A != C: the package's att_seq cannot run it (see test_model_contract.ChatRWKV), its att_one can
CHATRWKV = {"one_token_at_a_time": True}
