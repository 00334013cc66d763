"""rwkv_relax: compile RWKV language models with Apache TVM Relax."""
from .engine import Engine
from .errors import RWKVRelaxError
from .runtime import load_model

__all__ = ["Engine", "RWKVRelaxError", "load_model"]
