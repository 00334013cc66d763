"""RWKV-4 tensors: every checkpoint tensor with its shape, the model parameter it becomes, and how.

BlinkDL ``.pth`` names are canonical; the Hugging Face ``RwkvForCausalLM`` layout (transformers'
``convert_rwkv_checkpoint_to_hf.py``) only renames components and keeps every shape,
``time_decay`` / ``time_first`` included: both are (A,) in both layouts.
"""
from __future__ import annotations

import re

from ...errors import CheckpointError
from ...loaders import transforms as tf
from ...loaders.layouts import BLINK, HF_RWKV, CanonicalView
from ...loaders.table import ParamSource, TensorTable, outer_entries
from .config import RWKV4Config

LAYOUTS = (BLINK, HF_RWKV)


def is_version(view: CanonicalView) -> bool:
    """The bonus is ``time_first`` (RWKV-5 calls it ``time_faaaa``) and there is no ln_x."""
    return "blocks.0.att.time_first" in view and "blocks.0.att.ln_x.weight" not in view


def table(cfg: RWKV4Config) -> TensorTable:
    C, A, F, V = cfg.n_embd, cfg.dim_att, cfg.dim_ffn, cfg.vocab_size
    shapes, params = outer_entries(C, V)
    for i in range(cfg.n_layer):
        mix_vector = ((1, 1, C), tf.squeeze_vector)
        residual = tf.rescaled(i, cfg.rescale_every)  # the two projections that write the residual
        block = {  # name -> (checkpoint shape, transform to the model parameter of the same name)
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
        for name, (shape, transform) in block.items():
            shapes[f"blocks.{i}.{name}"] = shape
            params[f"blocks.{i}.{name}"] = ParamSource((f"blocks.{i}.{name}",), transform)
    return TensorTable(shapes, params)


def infer_config(view: CanonicalView, **overrides) -> RWKV4Config:
    """Shapes from the tensors; rescale_every from a Hugging Face config.json when present
    (converted RWKV-4 folders say 6, and transformers applies it at inference, so its logits
    depend on it)."""
    for needed in ("emb.weight", "blocks.0.att.key.weight", "blocks.0.ffn.key.weight"):
        if needed not in view:
            raise CheckpointError(f"{view.path}: missing tensor '{view.file_name(needed)}' needed to infer the config")
    layers = {int(m.group(1)) for n in view.names() if (m := re.match(r"blocks\.(\d+)\.", n))}
    V, C = view.shape("emb.weight")
    fields = dict(n_layer=max(layers) + 1, n_embd=C, vocab_size=V,
                  dim_att=view.shape("blocks.0.att.key.weight")[0],
                  dim_ffn=view.shape("blocks.0.ffn.key.weight")[0])
    if (every := view.hf_rescale_every()) is not None:
        fields["rescale_every"] = every
    return RWKV4Config.from_dict({**fields, **overrides})
