"""Channel-mix sparsity for benchmarks: make a random checkpoint as sparse as trained models are,
and measure the zero fraction of ``relu(K x)^2`` per layer.

Random Gaussian weights leave about half of the hidden units at zero on any input; trained RWKV
models leave far more (the point of the sparse value kernel, tir_kernels/ffn_value/). To get a
fraction P of zeros on typical inputs, ``sparsify`` shifts the channel mix's input and a subset of
``ffn.key`` rows together: ``ln2.bias`` gains a constant ``beta`` on every channel, so every
token's x_k has mean ~beta over channels, and each chosen row loses ``gamma`` per channel
(``K_f x`` drops by ~``C * beta * gamma``, several standard deviations), which keeps those units at
zero; the rest stay ~50% zero. ``2P - 1`` of the units are chosen (P >= 0.5).
"""
from __future__ import annotations

import numpy as np

BETA = 1.0  # added to ln2.bias: x_k's mean over channels
SIGMAS = 6.0  # how far below zero the chosen units are pushed, in standard deviations of K_f x


def sparsify(tensors: dict, P: float, n_layer: int, rng: np.random.Generator) -> dict:
    """``tensors`` (BlinkDL names, numpy) with a fraction ~P of channel-mix hidden units at zero."""
    if not 0.5 <= P < 1:
        raise SystemExit(f"--ffn-sparsity {P}: random weights already give ~0.5; use 0.5 <= P < 1")
    out = dict(tensors)
    for i in range(n_layer):
        key, bias = f"blocks.{i}.ffn.key.weight", f"blocks.{i}.ln2.bias"
        K = out[key].astype(np.float32).copy()
        F, C = K.shape
        chosen = rng.random(F) < 2 * P - 1
        # K_f x has std ~|K_f| for unit-variance x (layer norm); push chosen units SIGMAS below
        gamma = SIGMAS * np.linalg.norm(K[chosen], axis=1, keepdims=True) / (C * BETA)
        K[chosen] -= gamma
        out[key] = K.astype(out[key].dtype)
        out[bias] = (out[bias].astype(np.float32) + BETA).astype(out[bias].dtype)
    return out


def zero_fractions(checkpoint, tokens) -> list[float]:
    """Per layer, the fraction of zeros of ``relu(K x)^2`` over ``tokens`` (the version's float64
    numpy model on the checkpoint's fp32 weights)."""
    from rwkv_relax.pipeline import make_model, param_list, resolve_model
    from rwkv_relax.reference import dequantized_params
    from rwkv_relax.weights import library_params
    source = resolve_model(str(checkpoint))
    cfg = source.weights.config
    params = dict(library_params(source.weights, cfg, param_list(make_model(source, "q0f32")), "q0f32"))
    ref = source.spec.reference(cfg.to_dict(), dequantized_params(params, None))
    zeros: dict[str, list] = {}
    plain_lin = ref.lin

    def lin(name, x):
        y = plain_lin(name, x)
        if name.endswith("ffn.key"):
            zeros.setdefault(name, []).append(float(np.mean(y <= 0)))
        return y
    ref.lin = lin
    ref.forward(np.asarray(tokens, dtype=np.int64))
    return [float(np.mean(zeros[f"blocks.{i}.ffn.key"])) for i in range(cfg.n_layer)]
