"""Running compiled libraries: sequences in a runtime RNNState, weights from a checkpoint or a
tensor cache, the engine, chat sessions, tokenizers, sampling, state files.

Nothing here imports the compiler. Exports load on first use (PEP 562), so that
``rwkv_relax.runtime.tokenizers`` and the sampler import without TVM."""
from __future__ import annotations

import importlib

_EXPORTS = {
    "CompiledModel": ".model", "State": ".model", "load_model": ".model",
    "Engine": ".engine", "ChatSession": ".chat_session", "GenerationStats": ".generation",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
