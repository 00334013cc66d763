"""rwkv_relax: compile RWKV language models with Apache TVM Relax."""
from .errors import RWKVRelaxError
from .runtime import load_model

__all__ = ["RWKVRelaxError", "load_model"]
