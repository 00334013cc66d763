"""Which RWKV version and which file layout a checkpoint holds, from its tensor names alone.

Known relatives that we do not compile are refused by name first (half of such a model would
otherwise load into the nearest version, or fail with a confusing missing-tensor message). Then
every registered version offers its layouts; the first (version, layout) whose signature the
canonical names match wins."""
from __future__ import annotations

import re

from ..errors import CheckpointError
from ..registry import all_specs
from .layouts import CanonicalView
from .readers import Checkpoint

# (what it is, a test on the file's raw tensor names). Checked in order, before any version.
REFUSED = (
    ("an RWKV-7 DeepEmbed (rwkv7a) checkpoint (ffn.s_emb tensors)",
     lambda names: any(".s_emb" in n or re.search(r"\.ffn\.s[012]$", n) for n in names)),
    ("an RWKV-7 DEA (rwkv7b) checkpoint (qkv attention tensors)",
     lambda names: any(re.search(r"\.qkv\.", n) for n in names)),
    ("a hybrid RWKV / transformer checkpoint (ARWKV, QRWKV: attention or gated-MLP projections "
     "beside RWKV time mixing)",
     lambda names: any(re.search(r"\.(q_proj|self_attn|gate_proj|up_proj|down_proj)\.", n) for n in names)
     and any(re.search(r"time_m|\.att\.|\.attention\.|\.attn\.", n) for n in names)),
)

def detect(ckpt: Checkpoint) -> tuple[str, CanonicalView]:
    """``(version name, the checkpoint in canonical names)``; a one-line error for anything else."""
    names = ckpt.names()
    for what, test in REFUSED:
        if test(names):
            raise CheckpointError(f"{ckpt.path} is {what}; rwkv_relax compiles the plain RWKV "
                                  f"models: {', '.join(s.title for s in all_specs())}")
    supported = ", ".join(s.title for s in all_specs())
    for spec in all_specs():
        for layout in spec.names.LAYOUTS:
            view = CanonicalView(ckpt, layout)
            if "emb.weight" in view and spec.names.is_version(view):
                return spec.name, view
    hint = _other_version(names)
    if hint:
        raise CheckpointError(f"{ckpt.path} is {hint}; rwkv_relax supports {supported}")
    if not any(n.endswith("emb.weight") or n.endswith("embeddings.weight") for n in names):
        raise CheckpointError(
            f"{ckpt.path} is not an RWKV checkpoint (no embedding table such as 'emb.weight'; "
            f"first tensors: {', '.join(names[:3])})")
    raise CheckpointError(f"{ckpt.path}: cannot tell the RWKV version or layout from its tensor names "
                          f"(first: {', '.join(names[:3])}); is it a complete RWKV checkpoint?")


def _other_version(names: list[str]) -> str | None:
    """Name an RWKV generation that no registered version claimed."""
    has = lambda frag: any(frag in n for n in names)
    if has("ln_x") and has("time_decay"):
        return "an RWKV-5.1 checkpoint" if has("gate") else "an RWKV-5.0 checkpoint"
    return None
