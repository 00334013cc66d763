"""Shared fixtures: random checkpoints in real formats and their compiled llvm libraries, made
once per test session and shared by every test that asks for the same thing."""
from __future__ import annotations

import json
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest


def layout_named(arch: str, name: str):
    """A version's file layout by name ("blink", "hf", "fla", ...)."""
    from rwkv_relax.registry import get_spec
    layouts = {layout.name: layout for layout in get_spec(arch).names.LAYOUTS}
    return layouts[name]


class ModelFactory:
    """Builds (once per session) checkpoints and llvm libraries keyed by their arguments."""

    def __init__(self, root):
        self.root = root
        self._libs = {}

    def checkpoint(self, arch: str, name: str, layout: str = "blink", suffix: str = ".pth", **shape):
        from rwkv_relax.registry import get_spec
        from rwkv_relax.testing.random_weights import write_checkpoint
        path = self.root / f"{arch}-{name}-{layout}{suffix}"
        if not path.exists():
            tensors = get_spec(arch).random_tensors(**shape)
            write_checkpoint(tensors, path, layout_named(arch, layout))
        return path

    def library(self, model_path, **build_kwargs):
        """One llvm library per (model, build arguments) for the whole session."""
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


def pytest_configure(config):
    # where test_fuzz.py counts its cases; set in the controller, inherited by xdist's workers
    if not os.environ.get("RWKV_FUZZ_COUNTS"):
        os.environ["RWKV_FUZZ_COUNTS"] = tempfile.mkdtemp(prefix="rwkv_fuzz_counts_")


def pytest_terminal_summary(terminalreporter):
    folder = Path(os.environ.get("RWKV_FUZZ_COUNTS", ""))
    counts: dict[str, int] = {}
    for f in folder.glob("*.*") if folder.is_dir() else ():
        surface = f.name.rsplit(".", 1)[0]
        counts[surface] = counts.get(surface, 0) + f.stat().st_size
    if counts:
        terminalreporter.write_sep("-", f"fuzz cases per surface ({sum(counts.values())} in all)")
        for surface, n in sorted(counts.items()):
            terminalreporter.write_line(f"{n:6d}  {surface}")
