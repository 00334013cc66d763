"""RWKV-6 tensors: every checkpoint tensor with its shape, and every model parameter made from them.

Layouts: BlinkDL's x060 ``.pth`` (canonical) and the "-HF" remote code (``RWKV/v6-Finch-*-HF``:
``rwkv.blocks.N.attention.*``, ``feed_forward``, ``pre_ln``), which only renames components and
keeps every shape and every ``time_maa_*`` suffix. A state-tuned file's ``att.time_state`` is
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
from .config import RWKV6Config

LAYOUTS = (BLINK, HF_RWKV)
MIXES = ("w", "k", "v", "r", "g")  # the order of the five ddlerp blocks in time_maa_w1 / w2


def is_version(view: CanonicalView) -> bool:
    """ddlerp's ``time_maa_x`` exists only in RWKV-6 (the ``rwkv`` package keys on ``time_maa``)."""
    return "blocks.0.att.time_maa_x" in view


def table(cfg: RWKV6Config) -> TensorTable:
    C, A, F, V, H, N = cfg.n_embd, cfg.dim_att, cfg.dim_ffn, cfg.vocab_size, cfg.n_head, cfg.head_size
    Dm, Dd = cfg.dim_mix_lora, cfg.dim_decay_lora
    shapes, params = outer_entries(C, V)
    optional = {}
    for i in range(cfg.n_layer):
        b = f"blocks.{i}."
        att = b + "att."
        residual = tf.rescaled(i, cfg.rescale_every)  # the two projections that write the residual
        for name in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias"):
            shapes[b + name], params[b + name] = (C,), as_stored(b + name)
        for m in ("x", *MIXES):
            shapes[att + f"time_maa_{m}"] = (1, 1, C)
            params[att + f"time_maa_{m}"] = ParamSource((att + f"time_maa_{m}",), tf.squeeze_vector)
        shapes[att + "time_maa_w1"], shapes[att + "time_maa_w2"] = (C, 5 * Dm), (5, Dm, C)
        params[att + "maa_lora.down"] = ParamSource((att + "time_maa_w1",), tf.lora_factor)
        for blk, m in enumerate(MIXES):
            params[att + f"maa_lora.up_{m}"] = ParamSource((att + "time_maa_w2",), tf.stacked_lora_factor(blk))
        shapes[att + "time_decay"] = (1, 1, A)
        params[att + "time_decay"] = ParamSource((att + "time_decay",), tf.squeeze_float32)  # raw d
        shapes[att + "time_decay_w1"], shapes[att + "time_decay_w2"] = (C, Dd), (Dd, A)
        params[att + "decay_lora.down"] = ParamSource((att + "time_decay_w1",), tf.lora_factor)
        params[att + "decay_lora.up"] = ParamSource((att + "time_decay_w2",), tf.lora_factor)
        shapes[att + "time_faaaa"] = (H, N)
        params[att + "time_faaaa"] = ParamSource((att + "time_faaaa",), tf.as_float32)  # u, raw
        for lin in ("receptance", "key", "value", "gate"):
            shapes[att + f"{lin}.weight"], params[att + f"{lin}.weight"] = (A, C), as_stored(att + f"{lin}.weight")
        shapes[att + "output.weight"] = (C, A)
        params[att + "output.weight"] = ParamSource((att + "output.weight",), residual)
        shapes[att + "ln_x.weight"] = shapes[att + "ln_x.bias"] = (A,)
        params[att + "ln_x_weight"] = ParamSource((att + "ln_x.weight",), tf.as_float32)
        params[att + "ln_x_bias"] = ParamSource((att + "ln_x.bias",), tf.as_float32)
        optional[time_state.canonical_name(i)] = (H, N, N)  # [head, value, key]
        for m in ("k", "r"):
            shapes[b + f"ffn.time_maa_{m}"] = (1, 1, C)
            params[b + f"ffn.time_maa_{m}"] = ParamSource((b + f"ffn.time_maa_{m}",), tf.squeeze_vector)
        shapes[b + "ffn.key.weight"], params[b + "ffn.key.weight"] = (F, C), as_stored(b + "ffn.key.weight")
        shapes[b + "ffn.receptance.weight"] = (C, C)
        params[b + "ffn.receptance.weight"] = as_stored(b + "ffn.receptance.weight")
        shapes[b + "ffn.value.weight"] = (C, F)
        params[b + "ffn.value.weight"] = ParamSource((b + "ffn.value.weight",), residual)
    return TensorTable(shapes, params, optional=optional)


def initial_state(view: CanonicalView, cfg: RWKV6Config) -> dict[tuple[int, str], np.ndarray] | None:
    """A state-tuned checkpoint's ``att.time_state`` of every layer as the library's WKV state
    entries ``{(layer, "att_kv"): (H, key, value)}``; None for a plain checkpoint."""
    return time_state.from_view(view, cfg.n_layer)


def infer_config(view: CanonicalView, **overrides) -> RWKV6Config:
    """Every width from the tensor shapes: heads from time_faaaa, D_mix from time_maa_w1 (five
    blocks), D_decay from time_decay_w1, the FFN from ffn.key; rescale_every from a Hugging Face
    config.json when present."""
    shape = view.required_shape
    layers = [int(m.group(1)) for n in view.names() if (m := re.match(r"blocks\.(\d+)\.", n))]
    V, C = shape("emb.weight")
    A = shape("blocks.0.att.key.weight")[0]
    H, N = shape("blocks.0.att.time_faaaa")
    mix_width = shape("blocks.0.att.time_maa_w1")[1]
    if A != H * N:
        raise CheckpointError(f"{view.path}: time_faaaa {H}x{N} does not match dim_att {A}")
    if mix_width % len(MIXES):
        raise CheckpointError(f"{view.path}: '{view.file_name('blocks.0.att.time_maa_w1')}' has width {mix_width}, "
                              "not five LoRA blocks (w, k, v, r, g); is it an RWKV-6 checkpoint?")
    fields = dict(n_layer=max(layers) + 1, n_embd=C, vocab_size=V, head_size=N, dim_att=A,
                  dim_ffn=shape("blocks.0.ffn.key.weight")[0], dim_mix_lora=mix_width // len(MIXES),
                  dim_decay_lora=shape("blocks.0.att.time_decay_w1")[1])
    if (every := view.hf_rescale_every()) is not None:
        fields["rescale_every"] = every
    return RWKV6Config.from_dict({**fields, **overrides})
