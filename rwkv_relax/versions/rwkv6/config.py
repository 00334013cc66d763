"""RWKV-6 config. Both LoRA widths are read from the checkpoint's tensor shapes: the training code
hard-codes 32 / 64, but the released 7B and 14B use 64 / 128 (every other port special-cases
``hidden_size == 4096``)."""
from __future__ import annotations

import dataclasses

from ...config import RWKVConfig
from ...errors import ConfigError


@dataclasses.dataclass
class RWKV6Config(RWKVConfig):
    """Shape and numerics of an RWKV-6 model."""

    model_type = "rwkv6"

    vocab_size: int = 65536
    head_size: int = 64
    dim_mix_lora: int = 0  # D_mix: att.time_maa_w1 is (C, 5 * D_mix), one block per w, k, v, r, g
    dim_decay_lora: int = 0  # D_decay: att.time_decay_w1 is (C, D_decay)
    ln_x_eps: float = 64e-5  # notice: per-head GroupNorm eps of the reference; several ports use 1e-5

    def default_dim_ffn(self) -> int:
        return int(self.n_embd * 3.5) // 32 * 32  # as the World models were trained

    def __post_init__(self):
        super().__post_init__()
        name = type(self).__name__
        if self.dim_att % self.head_size:
            raise ConfigError(f"{name}: dim_att {self.dim_att} is not a multiple of head_size {self.head_size}")
        missing = [k for k in ("dim_mix_lora", "dim_decay_lora") if getattr(self, k) <= 0]
        if missing:
            raise ConfigError(f"{name} needs the LoRA widths {', '.join(missing)} (read from a checkpoint's "
                              "att.time_maa_w1 / time_decay_w1 shapes, or given in the config)")

    @property
    def n_head(self) -> int:
        return self.dim_att // self.head_size
