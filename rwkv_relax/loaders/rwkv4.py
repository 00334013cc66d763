"""RWKV-4 name table: every checkpoint tensor with its shape, the model parameter it becomes, and how.

BlinkDL ``.pth`` names are canonical; the Hugging Face ``RwkvForCausalLM`` layout (transformers'
``convert_rwkv_checkpoint_to_hf.py``) only renames components (``loaders/detect.py``) and keeps
every shape, ``time_decay`` / ``time_first`` included: both are (A,) in both layouts.
"""
from __future__ import annotations

import re
from typing import Callable

from ..errors import CheckpointError
from ..models.rwkv4 import RWKV4Config
from . import transforms as tf
from .detect import to_canonical
from .readers import Checkpoint
from .table import ParamSource

_EMBEDDING = ("emb.weight", "blocks.0.ln0.weight", "blocks.0.ln0.bias")


def _block(cfg: RWKV4Config, i: int) -> dict[str, tuple[tuple[int, ...], Callable]]:
    """Layer ``i``'s tensors: name suffix -> (checkpoint shape, transform to the model parameter
    of the same name)."""
    C, A, F = cfg.n_embd, cfg.dim_att, cfg.dim_ffn
    mix_vector = ((1, 1, C), tf.squeeze_vector)
    residual = tf.rescaled(i, cfg.rescale_every)  # the two projections that write the residual
    return {
        "ln1.weight": ((C,), tf.identity), "ln1.bias": ((C,), tf.identity),
        "ln2.weight": ((C,), tf.identity), "ln2.bias": ((C,), tf.identity),
        "att.time_mix_k": mix_vector, "att.time_mix_v": mix_vector, "att.time_mix_r": mix_vector,
        "att.time_decay": ((A,), tf.decay_v4),
        "att.time_first": ((A,), tf.as_float32),
        "att.key.weight": ((A, C), tf.identity),
        "att.value.weight": ((A, C), tf.identity),
        "att.receptance.weight": ((A, C), tf.identity),
        "att.output.weight": ((C, A), residual),
        "ffn.time_mix_k": mix_vector, "ffn.time_mix_r": mix_vector,
        "ffn.key.weight": ((F, C), tf.identity),
        "ffn.receptance.weight": ((C, C), tf.identity),
        "ffn.value.weight": ((C, F), residual),
    }


def _outside_blocks(cfg: RWKV4Config) -> dict[str, tuple[int, ...]]:
    C, V = cfg.n_embd, cfg.vocab_size
    return {"emb.weight": (V, C), "blocks.0.ln0.weight": (C,), "blocks.0.ln0.bias": (C,),
            "ln_out.weight": (C,), "ln_out.bias": (C,), "head.weight": (V, C)}


def source_shapes(cfg: RWKV4Config) -> dict[str, tuple[int, ...]]:
    """Every tensor of a BlinkDL RWKV-4 checkpoint, with its shape (canonical names)."""
    shapes = _outside_blocks(cfg)
    for i in range(cfg.n_layer):
        shapes.update({f"blocks.{i}.{name}": shape for name, (shape, _) in _block(cfg, i).items()})
    return shapes


def param_table(cfg: RWKV4Config) -> dict[str, ParamSource]:
    """Model parameter name -> source tensors + transform. Block parameters keep their
    checkpoint names; ln0 disappears into the embedding table."""
    table = {"embeddings.weight": ParamSource(_EMBEDDING, tf.fold_ln0_into_embedding)}
    table.update({name: ParamSource((name,), tf.identity)
                  for name in ("ln_out.weight", "ln_out.bias", "head.weight")})
    for i in range(cfg.n_layer):
        table.update({f"blocks.{i}.{name}": ParamSource((f"blocks.{i}.{name}",), transform)
                      for name, (_, transform) in _block(cfg, i).items()})
    return table


def infer_config(ckpt: Checkpoint, layout: str, **overrides) -> RWKV4Config:
    """Shapes from the tensors; rescale_every from a Hugging Face config.json when present
    (converted RWKV-4 folders say 6, and transformers applies it at inference, so its logits
    depend on it)."""
    shapes = {to_canonical(n, layout): ckpt.shape(n) for n in ckpt.names()}
    for needed in ("emb.weight", "blocks.0.att.key.weight", "blocks.0.ffn.key.weight"):
        if needed not in shapes:
            raise CheckpointError(f"{ckpt.path}: missing tensor '{needed}' needed to infer the config")
    layers = {int(m.group(1)) for n in shapes if (m := re.match(r"blocks\.(\d+)\.", n))}
    V, C = shapes["emb.weight"]
    fields = dict(n_layer=max(layers) + 1, n_embd=C, vocab_size=V,
                  dim_att=shapes["blocks.0.att.key.weight"][0], dim_ffn=shapes["blocks.0.ffn.key.weight"][0])
    hf = ckpt.hf_config
    if "rescale_every" in hf:
        fields["rescale_every"] = max(int(hf["rescale_every"]), 0)  # transformers: <= 0 means never
    fields.update(overrides)
    return RWKV4Config(**fields)
