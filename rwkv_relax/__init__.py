"""rwkv_relax: compile RWKV language models with Apache TVM Relax.

Exports load on first use (PEP 562): ``import rwkv_relax`` is instant, and importing one part
(the tokenizers, the sampler, the configs and name tables) never drags in TVM or torch."""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Engine": ".jit",  # the runtime engine, building the model library on first use
    "RWKVRelaxError": ".errors",
    "load_model": ".runtime.model",
    "CompiledModel": ".runtime.model",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
