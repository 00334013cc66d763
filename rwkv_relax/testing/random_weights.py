"""Random RWKV checkpoints with realistic initial scales, written in the real file layouts.

Scales follow BlinkDL's RWKV-LM initialisation (time-mix ramps, decay speeds, bonus ramps; each
version's own draws are in ``versions/<v>/random.py``) with trained-model-like LayerNorm and
projection magnitudes, so that the WKV state, GroupNorm and logits all live in the ranges real
models have.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..loaders.layouts import BLINK, Layout


class RandomInit:
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


def ffn_v4(init: RandomInit, n_embd: int, dim_ffn: int, r1_0: float) -> dict[str, np.ndarray]:
    """The RWKV-4/5 channel mix (names under ``ffn.``)."""
    C, F = n_embd, dim_ffn
    return {"time_mix_k": init.time_mix(r1_0), "time_mix_r": init.time_mix(r1_0),
            "key.weight": init.lin(F, C), "receptance.weight": init.lin(C, C),
            "value.weight": init.lin(C, F, 0.5)}


def rwkv_tensors(init: RandomInit, n_layer: int, n_embd: int, vocab_size: int, time_mix,
                 channel_mix) -> dict[str, np.ndarray]:
    """Embedding, LayerNorms and head, plus per layer ``time_mix(layer, r01, r1_0)`` (names under
    ``att.``) and ``channel_mix(layer, r01, r1_0)`` (under ``ffn.``). ``r01`` runs 0 -> 1 over the
    layers, ``r1_0`` 1 -> ~0, as in BlinkDL's init."""
    C, V = n_embd, vocab_size
    t = {"emb.weight": init.rng.standard_normal((V, C)).astype(np.float32) * 0.5}
    t["blocks.0.ln0.weight"], t["blocks.0.ln0.bias"] = init.ln(C)
    for i in range(n_layer):
        b = f"blocks.{i}."
        r01 = i / max(n_layer - 1, 1)
        r1_0 = 1.0 - i / n_layer
        t[b + "ln1.weight"], t[b + "ln1.bias"] = init.ln(C)
        t[b + "ln2.weight"], t[b + "ln2.bias"] = init.ln(C)
        t.update({b + "att." + name: x for name, x in time_mix(i, r01, r1_0).items()})
        t.update({b + "ffn." + name: x for name, x in channel_mix(i, r01, r1_0).items()})
    t["ln_out.weight"], t["ln_out.bias"] = init.ln(C)
    t["head.weight"] = init.lin(V, C, 2.0)
    return t


def write_checkpoint(tensors: dict[str, np.ndarray], path: str | Path, layout: Layout = BLINK,
                     dtype: torch.dtype = torch.float32) -> Path:
    """Write canonical tensors in ``layout`` (BlinkDL's by default), as ``.safetensors`` or a torch
    pickle (``.pth``, ``.bin``) by the path's suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {}
    for canon, value in tensors.items():
        name, array = layout.file_tensor(canon, value)
        state[name] = torch.from_numpy(np.ascontiguousarray(array)).to(dtype)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def write_hf_folder(tensors: dict[str, np.ndarray], folder: str | Path, config: dict, layout: Layout,
                    weights: str = "model.safetensors") -> Path:
    """Write canonical tensors as a Hugging Face model folder: ``weights`` in ``layout`` plus
    ``config.json`` (``config``, e.g. ``transformers.RwkvConfig(...).to_dict()``)."""
    folder = Path(folder)
    write_checkpoint(tensors, folder / weights, layout=layout)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return folder
