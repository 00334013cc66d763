"""Model libraries built on first use and cached (MLC-LLM's JIT): the bridge that lets the
runtime's :class:`Engine` start from a model directory alone. This is compiler-side code; the
runtime never imports it.

The cache key is ``mlc-chat-config.json``, the device (for the CPU: its LLVM name, as -mcpu is
this host's), the TVM version and the compiler's own source: a library built by other code is
stale.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import time
from pathlib import Path

from ._fs import cache_dir, tree_fingerprint
from .config import CHAT_CONFIG
from .runtime import engine as runtime_engine
from .runtime.model_dir import EngineError, read_chat_config
from .targets import DEVICE_TARGETS, get_target

log = logging.getLogger("rwkv_relax")


def default_cache_dir() -> Path:
    """``~/.cache/rwkv_relax/libs`` (under ``$XDG_CACHE_HOME`` when set)."""
    return cache_dir("libs")


@functools.lru_cache(maxsize=1)
def _compiler_fingerprint() -> str:
    root = Path(__file__).resolve().parent
    return tree_fingerprint(root, root.parent / "tir_kernels")


def device_target(device: str) -> str:
    try:
        return DEVICE_TARGETS[device]
    except KeyError:
        raise EngineError(f"unknown device '{device}'; valid: {', '.join(DEVICE_TARGETS)}") from None


def cached_library_path(model_dir: str | Path, device: str = "cpu",
                        cache_dir: str | Path | None = None) -> Path:
    """Where :func:`ensure_library` keeps the library of ``model_dir`` for ``device``."""
    import tvm

    from .targets.cpu import host_cpu
    target = device_target(device)
    config = read_chat_config(model_dir)
    key = hashlib.sha256()
    key.update((Path(model_dir) / CHAT_CONFIG).read_bytes())
    key.update(f"\0{device}\0{host_cpu() if target == 'llvm' else ''}\0{tvm.__version__}\0".encode())
    key.update(_compiler_fingerprint().encode())
    name = f"{config['model_type']}-{config.get('quantization', 'q0f32')}-{device}-{key.hexdigest()[:16]}"
    return Path(cache_dir or default_cache_dir()) / (name + get_target(target).extension)


def ensure_library(model_dir: str | Path, device: str = "cpu",
                   cache_dir: str | Path | None = None) -> Path:
    """The cached library of ``model_dir`` for ``device``, built first if it is not there."""
    path = cached_library_path(model_dir, device, cache_dir)
    if not path.is_file():
        from .pipeline import build
        log.info("building the model library for %s (once; cached as %s)", device, path)
        t0 = time.perf_counter()
        build(str(model_dir), target=device_target(device), output=path)
        log.info("built the model library in %.0f s", time.perf_counter() - t0)
    return path


class Engine(runtime_engine.Engine):
    """:class:`rwkv_relax.runtime.engine.Engine` that builds and caches the library for
    ``device`` when ``model_lib`` is None (``lib_cache_dir``, default ``~/.cache/rwkv_relax/libs``)."""

    def __init__(self, model_dir, model_lib=None, device: str = "cpu", *, lib_cache_dir=None, **kwargs):
        device_target(device)
        self._lib_cache_dir = lib_cache_dir
        super().__init__(model_dir, model_lib, device, **kwargs)

    def _library(self, model_lib):
        if model_lib is not None:
            return Path(model_lib)
        return ensure_library(self.model_dir, self.device, self._lib_cache_dir)
