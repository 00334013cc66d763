"""Random RWKV checkpoints with realistic initial scales, written in the real file layouts.

Scales follow BlinkDL's RWKV-LM initialisation (time-mix ramps, decay speeds spread over
[-6, -1], bonus ramps) with trained-model-like LayerNorm and projection magnitudes, so that the
WKV state, GroupNorm and logits all live in the ranges real models have.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..loaders.detect import to_layout


def rwkv5_tensors(n_layer: int = 2, n_embd: int = 128, vocab_size: int = 1024, head_size: int = 64,
                  dim_ffn: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Canonical (BlinkDL) RWKV-5.2 tensors in float32."""
    rng = np.random.default_rng(seed)
    C, A, V, N = n_embd, n_embd, vocab_size, head_size
    H = A // N
    F = dim_ffn or int(C * 3.5) // 32 * 32
    ramp = np.arange(C) / C

    def lin(o, i, gain=1.0):
        return (rng.standard_normal((o, i)) * gain / np.sqrt(i)).astype(np.float32)

    def ln(n):
        return ((1 + 0.1 * rng.standard_normal(n)).astype(np.float32),
                (0.05 * rng.standard_normal(n)).astype(np.float32))

    t = {"emb.weight": rng.standard_normal((V, C)).astype(np.float32) * 0.5}
    t["blocks.0.ln0.weight"], t["blocks.0.ln0.bias"] = ln(C)
    for i in range(n_layer):
        b = f"blocks.{i}."
        r01 = i / max(n_layer - 1, 1)
        r1_0 = 1.0 - i / n_layer
        t[b + "ln1.weight"], t[b + "ln1.bias"] = ln(C)
        t[b + "ln2.weight"], t[b + "ln2.bias"] = ln(C)
        for m, p in (("k", 1.0), ("v", 1.0), ("r", 0.5), ("g", 0.5)):
            mix = np.power(ramp, r1_0 * p) + 0.02 * rng.standard_normal(C)
            t[b + f"att.time_mix_{m}"] = mix.reshape(1, 1, C).astype(np.float32)
        n = np.arange(A)
        decay = -6 + 5 * (n / (A - 1)) ** (0.7 + 1.3 * r01) + 0.1 * rng.standard_normal(A)
        t[b + "att.time_decay"] = decay.reshape(H, N).astype(np.float32)
        bonus = r01 * (1 - n / (A - 1)) + ((n + 1) % 3 - 1) * 0.1 + 0.1 * rng.standard_normal(A)
        t[b + "att.time_faaaa"] = bonus.reshape(H, N).astype(np.float32)
        t[b + "att.receptance.weight"] = lin(A, C)
        t[b + "att.key.weight"] = lin(A, C, 0.5)
        t[b + "att.value.weight"] = lin(A, C)
        t[b + "att.gate.weight"] = lin(A, C)
        t[b + "att.output.weight"] = lin(C, A, 0.5)
        t[b + "att.ln_x.weight"] = (((1 + i) / n_layer) ** 0.7 + 0.1 * rng.standard_normal(A)).astype(np.float32)
        t[b + "att.ln_x.bias"] = (0.05 * rng.standard_normal(A)).astype(np.float32)
        for m in ("k", "r"):
            t[b + f"ffn.time_mix_{m}"] = (np.power(ramp, r1_0) + 0.02 * rng.standard_normal(C)
                                          ).reshape(1, 1, C).astype(np.float32)
        t[b + "ffn.key.weight"] = lin(F, C)
        t[b + "ffn.receptance.weight"] = lin(C, C)
        t[b + "ffn.value.weight"] = lin(C, F, 0.5)
    t["ln_out.weight"], t["ln_out.bias"] = ln(C)
    t["head.weight"] = lin(V, C, 2.0)
    return t


def write_checkpoint(tensors: dict[str, np.ndarray], path: str | Path, layout: str = "blink",
                     dtype: torch.dtype = torch.float32) -> Path:
    """Write canonical tensors as a BlinkDL ``.pth`` (layout "blink") or in the Hugging Face layout
    (layout "hf"; ``.safetensors`` or ``.bin`` by the path's suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {to_layout(k, layout): torch.from_numpy(np.ascontiguousarray(v)).to(dtype)
             for k, v in tensors.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path
