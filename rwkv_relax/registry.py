"""One entry per architecture, tying config, model and loader together."""
from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Callable

from .config import ConfigBase
from .errors import ConfigError
from .loaders import rwkv4 as rwkv4_loader
from .loaders import rwkv5 as rwkv5_loader
from .models.rwkv4 import RWKV4, RWKV4Config
from .models.rwkv5 import RWKV5, RWKV5Config


@dataclasses.dataclass(frozen=True)
class Architecture:
    name: str
    config_cls: type[ConfigBase]
    model_cls: Callable
    loader: ModuleType  # source_shapes(cfg), param_table(cfg), infer_config(ckpt, layout)


ARCHITECTURES: dict[str, Architecture] = {
    "rwkv4": Architecture("rwkv4", RWKV4Config, RWKV4, rwkv4_loader),
    "rwkv5": Architecture("rwkv5", RWKV5Config, RWKV5, rwkv5_loader),
}


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ConfigError(f"unknown model_type '{name}'; supported: {', '.join(ARCHITECTURES)}") from None
