"""RWKV-5.2 tensors: every checkpoint tensor with its shape, and every model parameter made from them.

Layouts: BlinkDL ``.pth`` (canonical) and the "-HF" remote-code layout (``rwkv.blocks.N.attention.*``),
which only renames components and keeps every shape. A state-tuned file's ``att.time_state`` is
optional; when present in every layer it is the initial state of each new sequence.
"""
from __future__ import annotations

import re

import numpy as np

from ...errors import CheckpointError
from ...loaders import time_state
from ...loaders import transforms as tf
from ...loaders.layouts import BLINK, HF_RWKV, CanonicalView
from ...loaders.table import ParamSource, TensorTable, as_stored, outer_entries
from .config import RWKV5Config

LAYOUTS = (BLINK, HF_RWKV)


def is_version(view: CanonicalView) -> bool:
    """ln_x and a gate (5.1 and 5.2) with a (H, N) decay (5.2 only; 5.1 has one per head)."""
    name = "blocks.0.att.time_decay"
    return ("blocks.0.att.ln_x.weight" in view and "blocks.0.att.gate.weight" in view
            and name in view and len(view.shape(name)) == 2 and view.shape(name)[1] > 1)


def table(cfg: RWKV5Config) -> TensorTable:
    C, A, F, V, H, N = cfg.n_embd, cfg.dim_att, cfg.dim_ffn, cfg.vocab_size, cfg.n_head, cfg.head_size
    optional = {time_state.canonical_name(i): (H, N, N) for i in range(cfg.n_layer)}  # [head, value, key]
    shapes, params = outer_entries(C, V)
    for i in range(cfg.n_layer):
        b = f"blocks.{i}."
        residual = tf.rescaled(i, cfg.rescale_every)  # the two projections that write the residual
        shapes.update({
            b + "ln1.weight": (C,), b + "ln1.bias": (C,), b + "ln2.weight": (C,), b + "ln2.bias": (C,),
            b + "att.time_mix_k": (1, 1, C), b + "att.time_mix_v": (1, 1, C),
            b + "att.time_mix_r": (1, 1, C), b + "att.time_mix_g": (1, 1, C),
            b + "att.time_decay": (H, N), b + "att.time_faaaa": (H, N),
            b + "att.receptance.weight": (A, C), b + "att.key.weight": (A, C),
            b + "att.value.weight": (A, C), b + "att.gate.weight": (A, C),
            b + "att.output.weight": (C, A),
            b + "att.ln_x.weight": (A,), b + "att.ln_x.bias": (A,),
            b + "ffn.time_mix_k": (1, 1, C), b + "ffn.time_mix_r": (1, 1, C),
            b + "ffn.key.weight": (F, C), b + "ffn.receptance.weight": (C, C),
            b + "ffn.value.weight": (C, F),
        })
        for name in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias", "att.receptance.weight",
                     "att.key.weight", "att.value.weight", "att.gate.weight", "ffn.key.weight",
                     "ffn.receptance.weight"):
            params[b + name] = as_stored(b + name)
        for name in ("att.time_mix_k", "att.time_mix_v", "att.time_mix_r", "att.time_mix_g",
                     "ffn.time_mix_k", "ffn.time_mix_r"):
            params[b + name] = ParamSource((b + name,), tf.squeeze_vector)
        params[b + "att.time_decay"] = ParamSource((b + "att.time_decay",), tf.decay_v5)
        params[b + "att.time_faaaa"] = ParamSource((b + "att.time_faaaa",), tf.as_float32)
        params[b + "att.ln_x_weight"] = ParamSource((b + "att.ln_x.weight",), tf.as_float32)
        params[b + "att.ln_x_bias"] = ParamSource((b + "att.ln_x.bias",), tf.as_float32)
        params[b + "att.output.weight"] = ParamSource((b + "att.output.weight",), residual)
        params[b + "ffn.value.weight"] = ParamSource((b + "ffn.value.weight",), residual)
    return TensorTable(shapes, params, optional=optional)


def initial_state(view: CanonicalView, cfg: RWKV5Config) -> dict[tuple[int, str], np.ndarray] | None:
    """A state-tuned checkpoint's ``att.time_state`` of every layer as the library's WKV state
    entries ``{(layer, "att_kv"): (H, key, value)}``; None for a plain checkpoint."""
    return time_state.from_view(view, cfg.n_layer)


def infer_config(view: CanonicalView, **overrides) -> RWKV5Config:
    """Shapes from the tensors; rescale_every from a Hugging Face config.json when present."""
    shape = view.required_shape
    layers = [int(m.group(1)) for n in view.names() if (m := re.match(r"blocks\.(\d+)\.", n))]
    V, C = shape("emb.weight")
    A = shape("blocks.0.att.key.weight")[0]
    H, N = shape("blocks.0.att.time_decay")
    fields = dict(n_layer=max(layers) + 1, n_embd=C, vocab_size=V, head_size=N, dim_att=A,
                  dim_ffn=shape("blocks.0.ffn.key.weight")[0])
    if A != H * N:
        raise CheckpointError(f"{view.path}: time_decay {H}x{N} does not match dim_att {A}")
    if (every := view.hf_rescale_every()) is not None:
        fields["rescale_every"] = every
    return RWKV5Config.from_dict({**fields, **overrides})
