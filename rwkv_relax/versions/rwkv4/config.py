"""RWKV-4 config."""
from __future__ import annotations

import dataclasses

from ...config import RWKVConfig


@dataclasses.dataclass
class RWKV4Config(RWKVConfig):
    """Shape and numerics of an RWKV-4 model."""

    model_type = "rwkv4"

    vocab_size: int = 50277  # Pile / Raven (GPT-NeoX 20B tokenizer); World models use 65536

    def default_dim_ffn(self) -> int:
        return 4 * self.n_embd  # as every released RWKV-4 was trained
