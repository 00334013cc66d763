"""Random RWKV checkpoints with realistic initial scales, written in the real file layouts.

Scales follow BlinkDL's RWKV-LM initialisation (time-mix ramps, decay speeds spread over
[-6, -1] for RWKV-5 and [-5, 3] for RWKV-4, bonus ramps) with trained-model-like LayerNorm and
projection magnitudes, so that the WKV state, GroupNorm and logits all live in the ranges real
models have.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..loaders.detect import to_layout


class _RandomInit:
    """The draws every RWKV version's random checkpoint shares, from one seeded stream (callers
    draw in a fixed order, so a seed always gives the same checkpoint)."""

    def __init__(self, seed: int, n_embd: int):
        self.rng = np.random.default_rng(seed)
        self.ramp = np.arange(n_embd) / n_embd  # BlinkDL's time_weight: i / C

    def lin(self, o: int, i: int, gain: float = 1.0) -> np.ndarray:
        return (self.rng.standard_normal((o, i)) * gain / np.sqrt(i)).astype(np.float32)

    def ln(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return ((1 + 0.1 * self.rng.standard_normal(n)).astype(np.float32),
                (0.05 * self.rng.standard_normal(n)).astype(np.float32))

    def time_mix(self, exponent: float, offset: float = 0.0) -> np.ndarray:
        """``ramp ** exponent (+ offset)``, as initialised, plus trained-model-like noise; (1, 1, C)."""
        mix = np.power(self.ramp, exponent) + offset + 0.02 * self.rng.standard_normal(self.ramp.size)
        return mix.reshape(1, 1, -1).astype(np.float32)


def _rwkv_tensors(init: _RandomInit, n_layer: int, n_embd: int, dim_ffn: int, vocab_size: int,
                  time_mix) -> dict[str, np.ndarray]:
    """Everything but the time mix, which ``time_mix(layer, r01, r1_0)`` returns (names under
    ``att.``). ``r01`` runs 0 -> 1 over the layers, ``r1_0`` 1 -> ~0, as in BlinkDL's init."""
    C, F, V = n_embd, dim_ffn, vocab_size
    t = {"emb.weight": init.rng.standard_normal((V, C)).astype(np.float32) * 0.5}
    t["blocks.0.ln0.weight"], t["blocks.0.ln0.bias"] = init.ln(C)
    for i in range(n_layer):
        b = f"blocks.{i}."
        r01 = i / max(n_layer - 1, 1)
        r1_0 = 1.0 - i / n_layer
        t[b + "ln1.weight"], t[b + "ln1.bias"] = init.ln(C)
        t[b + "ln2.weight"], t[b + "ln2.bias"] = init.ln(C)
        t.update({b + "att." + name: x for name, x in time_mix(i, r01, r1_0).items()})
        for m in ("k", "r"):
            t[b + f"ffn.time_mix_{m}"] = init.time_mix(r1_0)
        t[b + "ffn.key.weight"] = init.lin(F, C)
        t[b + "ffn.receptance.weight"] = init.lin(C, C)
        t[b + "ffn.value.weight"] = init.lin(C, F, 0.5)
    t["ln_out.weight"], t["ln_out.bias"] = init.ln(C)
    t["head.weight"] = init.lin(V, C, 2.0)
    return t


def rwkv5_tensors(n_layer: int = 2, n_embd: int = 128, vocab_size: int = 1024, head_size: int = 64,
                  dim_ffn: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Canonical (BlinkDL) RWKV-5.2 tensors in float32."""
    init = _RandomInit(seed, n_embd)
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

    return _rwkv_tensors(init, n_layer, C, dim_ffn or int(C * 3.5) // 32 * 32, vocab_size, time_mix)


# Every LARGE_KEY_EVERY-th key channel gets LARGE_KEY_GAIN times the usual key weights, so that some
# k reach ~100: past float32's exp limit (88.7), where only WKV4's max trick keeps a / b finite.
LARGE_KEY_EVERY, LARGE_KEY_GAIN = 8, 80.0


def rwkv4_tensors(n_layer: int = 2, n_embd: int = 128, vocab_size: int = 1024, dim_ffn: int | None = None,
                  seed: int = 0, dim_att: int | None = None) -> dict[str, np.ndarray]:
    """Canonical (BlinkDL) RWKV-4 tensors in float32, time mix as RWKV-LM's RWKV-4 init."""
    init = _RandomInit(seed, n_embd)
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

    return _rwkv_tensors(init, n_layer, C, dim_ffn or 4 * C, vocab_size, time_mix)


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


def write_hf_folder(tensors: dict[str, np.ndarray], folder: str | Path, config: dict,
                    weights: str = "model.safetensors") -> Path:
    """Write canonical tensors as a Hugging Face model folder: ``weights`` in the HF layout plus
    ``config.json`` (``config``, e.g. ``transformers.RwkvConfig(...).to_dict()``)."""
    folder = Path(folder)
    write_checkpoint(tensors, folder / weights, layout="hf")
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return folder
