"""RWKV-5.2 config."""
from __future__ import annotations

import dataclasses

from ...config import RWKVConfig
from ...errors import ConfigError


@dataclasses.dataclass
class RWKV5Config(RWKVConfig):
    """Shape and numerics of an RWKV-5.2 model."""

    model_type = "rwkv5"

    vocab_size: int = 65536
    head_size: int = 64
    ln_x_eps: float = 64e-5  # notice: ChatRWKV v5.2 GroupNorm eps; rwkv.cpp/MLC use 1e-5 (wrong)

    def default_dim_ffn(self) -> int:
        return int(self.n_embd * 3.5) // 32 * 32  # as the World models were trained

    def __post_init__(self):
        super().__post_init__()
        if self.dim_att % self.head_size:
            raise ConfigError(f"dim_att {self.dim_att} is not a multiple of head_size {self.head_size}")

    @property
    def n_head(self) -> int:
        return self.dim_att // self.head_size
