"""Shared fixtures: random checkpoints in real formats and their compiled llvm libraries."""
from __future__ import annotations

import json
import os
import zlib

import numpy as np
import pytest

os.environ.setdefault("RWKV_JIT_ON", "1")
os.environ.setdefault("RWKV_CUDA_ON", "0")


class ModelFactory:
    """Builds (once per session) checkpoints and llvm libraries keyed by their arguments."""

    def __init__(self, root):
        self.root = root
        self._libs = {}

    def checkpoint(self, arch: str, name: str, layout: str = "blink", suffix: str = ".pth", **shape):
        from rwkv_relax.testing import checkpoints
        path = self.root / f"{arch}-{name}-{layout}{suffix}"
        if not path.exists():
            tensors = getattr(checkpoints, f"{arch}_tensors")(**shape)
            checkpoints.write_checkpoint(tensors, path, layout)
        return path

    def library(self, model_path, **build_kwargs):
        from rwkv_relax.pipeline import build
        key = (str(model_path), json.dumps(build_kwargs, sort_keys=True))
        if key not in self._libs:
            out = self.root / f"lib{len(self._libs)}.so"
            self._libs[key] = build(str(model_path), target="llvm", output=out, **build_kwargs)
        return self._libs[key]


@pytest.fixture(scope="session")
def factory(tmp_path_factory):
    return ModelFactory(tmp_path_factory.mktemp("models"))


@pytest.fixture
def rng(request):
    # a fresh, test-specific stream: different tests see different random inputs
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
