"""Which RWKV version and which file layout a checkpoint holds, from its tensor names alone."""
from __future__ import annotations

from ..errors import CheckpointError
from .readers import Checkpoint

# Canonical names are BlinkDL's; the Hugging Face layout renames whole dot-separated components
# and prefixes everything but the head with "rwkv.". One table serves both directions.
HF_COMPONENTS = {
    "emb": "embeddings",
    "ln0": "pre_ln",
    "att": "attention",
    "ffn": "feed_forward",
    "time_mix_k": "time_mix_key",
    "time_mix_v": "time_mix_value",
    "time_mix_r": "time_mix_receptance",
    "time_mix_g": "time_mix_gate",
}
_HF_TO_BLINK = {v: k for k, v in HF_COMPONENTS.items()}
LAYOUTS = ("blink", "hf")


def to_layout(canonical: str, layout: str) -> str:
    """The name a canonical (BlinkDL) tensor has in ``layout``."""
    if layout == "blink":
        return canonical
    parts = [HF_COMPONENTS.get(p, p) for p in canonical.split(".")]
    name = ".".join(parts)
    return name if canonical == "head.weight" else "rwkv." + name


def to_canonical(name: str, layout: str) -> str:
    if layout == "blink":
        return name
    if name.startswith("rwkv."):
        name = name[len("rwkv."):]
    return ".".join(_HF_TO_BLINK.get(p, p) for p in name.split("."))


def detect(ckpt: Checkpoint) -> tuple[str, str]:
    """Return ``(architecture, layout)``: architecture in {"rwkv4", "rwkv5"}, layout in LAYOUTS.

    Other RWKV versions are named in the error so the user knows what they have.
    """
    names = ckpt.names()
    if any(n.startswith("rwkv.") for n in names):
        layout = "hf"
    elif "emb.weight" in names:
        layout = "blink"
    else:
        raise CheckpointError(
            f"{ckpt.path} is not an RWKV checkpoint (no 'emb.weight' or 'rwkv.embeddings.weight'; "
            f"first tensors: {', '.join(names[:3])})")
    canon = [to_canonical(n, layout) for n in names]
    has = lambda frag: any(frag in n for n in canon)
    if has(".att.x_r") or has(".att.w0") or has(".att.a0"):
        raise CheckpointError(f"{ckpt.path} is an RWKV-7 checkpoint; rwkv_relax supports RWKV-4 and RWKV-5.2")
    if has("time_maa"):
        raise CheckpointError(f"{ckpt.path} is an RWKV-6 checkpoint; rwkv_relax supports RWKV-4 and RWKV-5.2")
    if has(".ln_x."):
        decay = [n for n in names if to_canonical(n, layout).endswith("att.time_decay")]
        shape = ckpt.shape(decay[0]) if decay else ()
        if has(".att.gate.") and len(shape) == 2 and shape[1] > 1:
            return "rwkv5", layout
        version = "5.1" if has(".att.gate.") else "5.0"
        raise CheckpointError(f"{ckpt.path} is an RWKV-{version} checkpoint; only RWKV-5.2 (World) "
                              "is supported among RWKV-5 models")
    if has(".att.time_first"):
        return "rwkv4", layout
    raise CheckpointError(f"{ckpt.path}: cannot tell the RWKV version (no ln_x, time_first or time_maa "
                          "tensors); is it a complete RWKV checkpoint?")
