"""RWKV-5.2 name table: every model parameter, the checkpoint tensors it comes from, and how."""
from __future__ import annotations

import re

from ..errors import CheckpointError
from ..models.rwkv5 import RWKV5Config
from . import transforms as tf
from .readers import Checkpoint
from .detect import to_canonical
from .table import ParamSource


def source_shapes(cfg: RWKV5Config) -> dict[str, tuple[int, ...]]:
    """Every tensor of a BlinkDL RWKV-5.2 checkpoint, with its shape (canonical names)."""
    C, A, F, V, H, N = cfg.n_embd, cfg.dim_att, cfg.dim_ffn, cfg.vocab_size, cfg.n_head, cfg.head_size
    shapes = {"emb.weight": (V, C), "blocks.0.ln0.weight": (C,), "blocks.0.ln0.bias": (C,),
              "ln_out.weight": (C,), "ln_out.bias": (C,), "head.weight": (V, C)}
    for i in range(cfg.n_layer):
        b = f"blocks.{i}."
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
    return shapes


def param_table(cfg: RWKV5Config) -> dict[str, ParamSource]:
    """Model parameter name -> source tensors + transform."""
    same = lambda name: ParamSource((name,), tf.identity)
    table = {
        "embeddings.weight": ParamSource(("emb.weight", "blocks.0.ln0.weight", "blocks.0.ln0.bias"),
                                         tf.fold_ln0_into_embedding),
        "ln_out.weight": same("ln_out.weight"), "ln_out.bias": same("ln_out.bias"),
        "head.weight": same("head.weight"),
    }
    for i in range(cfg.n_layer):
        b = f"blocks.{i}."
        for ln in ("ln1", "ln2"):
            table[b + ln + ".weight"] = same(b + ln + ".weight")
            table[b + ln + ".bias"] = same(b + ln + ".bias")
        for m in ("k", "v", "r", "g"):
            table[b + f"att.time_mix_{m}"] = ParamSource((b + f"att.time_mix_{m}",), tf.squeeze_vector)
        table[b + "att.time_decay"] = ParamSource((b + "att.time_decay",), tf.decay_v5)
        table[b + "att.time_faaaa"] = ParamSource((b + "att.time_faaaa",), tf.as_float32)
        for lin in ("receptance", "key", "value", "gate"):
            table[b + f"att.{lin}.weight"] = same(b + f"att.{lin}.weight")
        table[b + "att.output.weight"] = ParamSource((b + "att.output.weight",),
                                                     tf.rescaled(i, cfg.rescale_every))
        table[b + "att.ln_x_weight"] = ParamSource((b + "att.ln_x.weight",), tf.as_float32)
        table[b + "att.ln_x_bias"] = ParamSource((b + "att.ln_x.bias",), tf.as_float32)
        for m in ("k", "r"):
            table[b + f"ffn.time_mix_{m}"] = ParamSource((b + f"ffn.time_mix_{m}",), tf.squeeze_vector)
        table[b + "ffn.key.weight"] = same(b + "ffn.key.weight")
        table[b + "ffn.receptance.weight"] = same(b + "ffn.receptance.weight")
        table[b + "ffn.value.weight"] = ParamSource((b + "ffn.value.weight",),
                                                    tf.rescaled(i, cfg.rescale_every))
    return table


def infer_config(ckpt: Checkpoint, layout: str, **overrides) -> RWKV5Config:
    """Shapes from the tensors; rescale_every from a Hugging Face config.json when present."""
    canon = {to_canonical(n, layout): n for n in ckpt.names()}

    def shape(name):
        if name not in canon:
            raise CheckpointError(f"{ckpt.path}: missing tensor '{name}' needed to infer the config")
        return ckpt.shape(canon[name])

    layers = [int(m.group(1)) for n in canon if (m := re.match(r"blocks\.(\d+)\.", n))]
    V, C = shape("emb.weight")
    A = shape("blocks.0.att.key.weight")[0]
    H, N = shape("blocks.0.att.time_decay")
    fields = dict(n_layer=max(layers) + 1, n_embd=C, vocab_size=V, head_size=N, dim_att=A,
                  dim_ffn=shape("blocks.0.ffn.key.weight")[0])
    if A != H * N:
        raise CheckpointError(f"{ckpt.path}: time_decay {H}x{N} does not match dim_att {A}")
    hf = ckpt.hf_config
    if "rescale_every" in hf:
        fields["rescale_every"] = int(hf["rescale_every"])
    fields.update(overrides)
    return RWKV5Config(**fields)
