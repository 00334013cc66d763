"""RWKV-7 config. The four LoRA widths are read from the checkpoint's tensor shapes (the training
formula changed twice and the released models follow none of them); presets state them."""
from __future__ import annotations

import dataclasses

from ...config import RWKVConfig
from ...errors import ConfigError


@dataclasses.dataclass
class RWKV7Config(RWKVConfig):
    """Shape and numerics of an RWKV-7 model."""

    model_type = "rwkv7"

    vocab_size: int = 65536
    head_size: int = 64
    dim_decay_lora: int = 0  # D_w: att.w1 is (C, D_w)
    dim_a_lora: int = 0  # D_a: in-context learning rate, att.a1 (C, D_a)
    dim_v_lora: int = 0  # D_v: value residual, att.v1 (C, D_v) of layers >= 1 (0 with one layer)
    dim_gate_lora: int = 0  # D_g: att.g1 (C, D_g)
    ln_x_eps: float = 64e-5  # notice: per-head GroupNorm eps of the reference (ChatRWKV, training)
    l2_norm_eps: float = 1e-12  # F.normalize's default: kappa / max(||kappa||, eps)

    def default_dim_ffn(self) -> int:
        return 4 * self.n_embd  # as every released RWKV-7 was trained

    def __post_init__(self):
        super().__post_init__()
        name = type(self).__name__
        if self.dim_att != self.n_embd:
            raise ConfigError(f"{name}: RWKV-7 has no separate attention width (dim_att {self.dim_att} "
                              f"!= n_embd {self.n_embd})")
        if self.n_embd % self.head_size:
            raise ConfigError(f"{name}: n_embd {self.n_embd} is not a multiple of head_size {self.head_size}")
        if self.rescale_every:
            raise ConfigError(f"{name}: RWKV-7 has no rescale_every (the reference never halves the "
                              "residual); keep fp16 safe with --fp32-layers instead")
        widths = {"dim_decay_lora": self.dim_decay_lora, "dim_a_lora": self.dim_a_lora,
                  "dim_gate_lora": self.dim_gate_lora}
        if self.n_layer > 1:
            widths["dim_v_lora"] = self.dim_v_lora
        missing = [k for k, v in widths.items() if v <= 0]
        if missing:
            raise ConfigError(f"{name} needs the LoRA widths {', '.join(missing)} (read from a checkpoint's "
                              "att.w1 / a1 / v1 / g1 shapes, or given in the config)")

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size
