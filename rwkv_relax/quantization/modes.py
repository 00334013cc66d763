"""Quantization modes, named as in MLC-LLM (``q{bits}f{activation bits}_{scheme}``)."""
from __future__ import annotations

import dataclasses

from ..errors import RWKVRelaxError


@dataclasses.dataclass(frozen=True)
class QuantMode:
    name: str
    weight_bits: int | None  # None: weights stay in the activation dtype
    act_dtype: str
    group_size: int = 32
    description: str = ""

    @property
    def quantized(self) -> bool:
        return self.weight_bits is not None


MODES: dict[str, QuantMode] = {m.name: m for m in (
    QuantMode("q0f32", None, "float32", description="fp32 weights and activations"),
    QuantMode("q0f16", None, "float16", description="fp16 weights and activations"),
    QuantMode("q4f16_1", 4, "float16", description="4-bit symmetric groups of 32, fp16 scales/activations"),
    QuantMode("q4f32_1", 4, "float32", description="4-bit symmetric groups of 32, fp32 scales/activations"),
    QuantMode("q8f16_1", 8, "float16", description="8-bit symmetric groups of 32, fp16 scales/activations"),
)}


def get_mode(name: str) -> QuantMode:
    try:
        return MODES[name]
    except KeyError:
        raise RWKVRelaxError(f"unknown quantization '{name}'; valid modes: {', '.join(MODES)}") from None
