"""RWKV-7 tensors: every checkpoint tensor with its shape, and every model parameter made from them.

Layouts (each an exhaustive rule table onto BlinkDL's names):

* ``blink``: BlinkDL's x070 ``.pth`` (canonical);
* ``fla``: flash-linear-attention's ``RWKV7ForCausalLM`` (fla-hub/rwkv7-*): LoRA factors as torch
  ``Linear`` layers (transposed), w0/a0/v0 as the up-projections' biases, vectors flat, layer 0
  without the value-residual LoRA;
* ``hf``: the BlinkDL-named remote code ``Rwkv7ForCausalLM`` (``model.layers.N.attention.*``);
* ``transformers``: the native transformers port (``rwkv7.blocks.N.att.*``).

Layer 0's v0/v1/v2 are never read (layer 0's value *is* v_first); any shape is accepted for them.
"""
from __future__ import annotations

import re

from ...errors import CheckpointError
from ...loaders import transforms as tf
from ...loaders.layouts import AS_1_1_C, AS_STORED, BLINK, TRANSPOSED, CanonicalView, PatternLayout
from ...loaders.table import ParamSource, TensorTable, as_stored, outer_entries
from .config import RWKV7Config

MIXES = ("r", "w", "k", "v", "a", "g")  # the six token-shift lerps, att.x_r ... att.x_g
LORAS = {"w": "decay", "a": "a", "v": "v", "g": "gate"}  # att.{w,a,v,g}1 / 2 -> dim_<name>_lora


def _fla_rules():
    att, layer = "blocks.{i}.att.", "model.layers.{i}.attn."
    rules = [("emb.weight", "model.embeddings.weight", AS_STORED),
             ("blocks.0.ln0.{x}", "model.layers.0.pre_norm.{x}", AS_STORED),
             ("blocks.{i}.ln1.{x}", "model.layers.{i}.attn_norm.{x}", AS_STORED),
             ("blocks.{i}.ln2.{x}", "model.layers.{i}.ffn_norm.{x}", AS_STORED)]
    rules += [(att + f"x_{m}", layer + f"x_{m}", AS_1_1_C) for m in MIXES]
    for m in LORAS:
        rules += [(att + f"{m}1", layer + f"{m}_lora.lora.0.weight", TRANSPOSED),
                  (att + f"{m}2", layer + f"{m}_lora.lora.2.weight", TRANSPOSED)]
        if m != "g":  # the gate LoRA has no bias
            rules.append((att + f"{m}0", layer + f"{m}_lora.lora.2.bias", AS_1_1_C))
    rules += [(att + "k_k", layer + "k_k", AS_1_1_C), (att + "k_a", layer + "k_a", AS_1_1_C),
              (att + "r_k", layer + "r_k", AS_STORED)]
    rules += [(att + f"{ours}.weight", layer + f"{theirs}_proj.weight", AS_STORED)
              for ours, theirs in (("receptance", "r"), ("key", "k"), ("value", "v"), ("output", "o"))]
    rules += [(att + "ln_x.{x}", layer + "g_norm.{x}", AS_STORED),
              ("blocks.{i}.ffn.x_k", "model.layers.{i}.ffn.x_k", AS_1_1_C),
              ("blocks.{i}.ffn.{x}", "model.layers.{i}.ffn.{x}", AS_STORED),
              ("ln_out.{x}", "model.norm.{x}", AS_STORED),
              ("head.weight", "lm_head.weight", AS_STORED)]
    return rules


FLA = PatternLayout("fla", _fla_rules())
HF_REMOTE = PatternLayout("hf", [
    ("emb.weight", "model.embeddings.weight", AS_STORED),
    ("blocks.0.ln0.{x}", "model.pre_ln.{x}", AS_STORED),
    ("blocks.{i}.att.{x}", "model.layers.{i}.attention.{x}", AS_STORED),
    ("blocks.{i}.ffn.{x}", "model.layers.{i}.feed_forward.{x}", AS_STORED),
    ("blocks.{i}.{x}", "model.layers.{i}.{x}", AS_STORED),  # ln1, ln2
    ("ln_out.{x}", "model.ln_out.{x}", AS_STORED),
    ("head.weight", "head.weight", AS_STORED),
])
TRANSFORMERS = PatternLayout("transformers", [
    ("head.weight", "head.weight", AS_STORED),
    ("{x}", "rwkv7.{x}", AS_STORED),
])
LAYOUTS = (BLINK, FLA, HF_REMOTE, TRANSFORMERS)


def is_version(view: CanonicalView) -> bool:
    """The per-head bonus r_k and the decay bias w0 exist only in RWKV-7."""
    return "blocks.0.att.r_k" in view and "blocks.0.att.w0" in view


def table(cfg: RWKV7Config) -> TensorTable:
    C, F, V, H, N = cfg.n_embd, cfg.dim_ffn, cfg.vocab_size, cfg.n_head, cfg.head_size
    width = {m: getattr(cfg, f"dim_{LORAS[m]}_lora") for m in LORAS}
    shapes, params = outer_entries(C, V)
    ignored = ["blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"]
    for i in range(cfg.n_layer):
        b = f"blocks.{i}."
        for name in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias"):
            shapes[b + name], params[b + name] = (C,), as_stored(b + name)
        for m in MIXES:
            shapes[b + f"att.x_{m}"] = (1, 1, C)
            params[b + f"att.x_{m}"] = ParamSource((b + f"att.x_{m}",), tf.squeeze_vector)
        for m, d in width.items():
            if m == "v" and i == 0:
                continue  # layer 0's value is v_first itself: its v-LoRA is never used
            if m != "g":
                shapes[b + f"att.{m}0"] = (1, 1, C)
                params[b + f"att.{m}0"] = ParamSource((b + f"att.{m}0",), tf.squeeze_float32)
            shapes[b + f"att.{m}1"], shapes[b + f"att.{m}2"] = (C, d), (d, C)
            params[b + f"att.{m}_lora.down"] = ParamSource((b + f"att.{m}1",), tf.lora_factor)
            params[b + f"att.{m}_lora.up"] = ParamSource((b + f"att.{m}2",), tf.lora_factor)
        for name in ("k_k", "k_a"):
            shapes[b + f"att.{name}"] = (1, 1, C)
            params[b + f"att.{name}"] = ParamSource((b + f"att.{name}",), tf.squeeze_float32)
        shapes[b + "att.r_k"] = (H, N)
        params[b + "att.r_k"] = ParamSource((b + "att.r_k",), tf.as_float32)
        for lin in ("receptance", "key", "value", "output"):
            name = b + f"att.{lin}.weight"
            shapes[name], params[name] = (C, C), as_stored(name)
        shapes[b + "att.ln_x.weight"] = shapes[b + "att.ln_x.bias"] = (C,)
        params[b + "att.ln_x_weight"] = ParamSource((b + "att.ln_x.weight",), tf.as_float32)
        params[b + "att.ln_x_bias"] = ParamSource((b + "att.ln_x.bias",), tf.as_float32)
        shapes[b + "ffn.x_k"] = (1, 1, C)
        params[b + "ffn.x_k"] = ParamSource((b + "ffn.x_k",), tf.squeeze_vector)
        shapes[b + "ffn.key.weight"], params[b + "ffn.key.weight"] = (F, C), as_stored(b + "ffn.key.weight")
        shapes[b + "ffn.value.weight"], params[b + "ffn.value.weight"] = (C, F), as_stored(b + "ffn.value.weight")
    return TensorTable(shapes, params, ignored)


def infer_config(view: CanonicalView, **overrides) -> RWKV7Config:
    """Every width from the tensor shapes: heads from r_k, the LoRA widths from w1 / a1 / g1 and
    layer 1's v1 (layer 0's may be missing or a dummy), the FFN from ffn.key."""
    shape = view.required_shape
    layers = {int(m.group(1)) for n in view.names() if (m := re.match(r"blocks\.(\d+)\.", n))}
    n_layer = max(layers) + 1
    V, C = shape("emb.weight")
    H, N = shape("blocks.0.att.r_k")
    if H * N != C:
        raise CheckpointError(f"{view.path}: r_k is {H}x{N} heads, which does not make n_embd {C}")
    fields = dict(n_layer=n_layer, n_embd=C, vocab_size=V, head_size=N, dim_ffn=shape("blocks.0.ffn.key.weight")[0],
                  dim_decay_lora=shape("blocks.0.att.w1")[1], dim_a_lora=shape("blocks.0.att.a1")[1],
                  dim_gate_lora=shape("blocks.0.att.g1")[1],
                  dim_v_lora=shape("blocks.1.att.v1")[1] if n_layer > 1 else 0)
    return RWKV7Config.from_dict({**fields, **overrides})
