"""State-tuned initial states (``blocks.i.att.time_state``), as RWKV-PEFT's state tuning and
BlinkDL's trainer write them for RWKV-5/6: one (H, value, key) matrix per layer, either inside a
full checkpoint or alone in a small file. The library's WKV5/6 state is (H, key, value), so each
matrix is transposed on the way in and out (the ``rwkv`` package does the same ``transpose(1, 2)``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ..errors import CheckpointError
from . import transforms as tf

CACHE_FILE = "time_state.safetensors"  # beside a tensor cache: convert_weight keeps a checkpoint's tuning
ENTRY = "att_kv"  # the library state entry a time_state initialises
# BlinkDL names and the "-HF" remote code's
NAME = re.compile(r"(?:rwkv\.)?blocks\.(\d+)\.(?:att|attention)\.time_state")


def canonical_name(layer: int) -> str:
    return f"blocks.{layer}.att.time_state"


def collect(path: Path | str, named: Iterable[tuple[str, np.ndarray]], n_layer: int
            ) -> dict[tuple[int, str], np.ndarray] | None:
    """``{(layer, "att_kv"): (H, key, value) float32}`` from ``(file name, array)`` pairs holding
    every layer's time_state (None when there is none at all). A file that tunes some layers but
    not others, or holds NaN/Inf, is refused by name."""
    found = {}
    for name, array in named:
        m = NAME.fullmatch(name)
        if m is None:
            continue
        layer = int(m[1])
        if layer >= n_layer:
            raise CheckpointError(f"{path}: '{name}' is for layer {layer}, the model has {n_layer} layers")
        if np.ndim(array) != 3:
            raise CheckpointError(f"{path}: '{name}' has shape {list(np.shape(array))}, expected [heads, "
                                  "head_size, head_size]")
        if not np.issubdtype(np.asarray(array).dtype, np.floating):
            raise CheckpointError(f"{path}: '{name}' is {np.asarray(array).dtype}, but a state is floating point")
        if not np.all(np.isfinite(array)):
            raise CheckpointError(f"{path}: '{name}' holds NaN or Inf values; the state file is corrupt")
        found[layer] = tf.state_value_key_to_key_value(np.asarray(array, np.float32))
    if not found:
        return None
    missing = [i for i in range(n_layer) if i not in found]
    if missing:
        raise CheckpointError(f"{path}: state tuning lacks '{canonical_name(missing[0])}' (every layer needs "
                              "its att.time_state); re-export the state tuning")
    return {(i, ENTRY): found[i] for i in range(n_layer)}


def from_view(view, n_layer: int) -> dict[tuple[int, str], np.ndarray] | None:
    """A checkpoint's own state tuning (``collect`` over its ``att.time_state`` tensors, seen in
    canonical names through ``view``, a :class:`~.layouts.CanonicalView`)."""
    names = [canonical_name(i) for i in range(n_layer)]
    return collect(view.path, ((n, view.get(n)) for n in names if n in view), n_layer)


def to_file_layout(entries: Mapping[tuple[int, str], np.ndarray], n_layer: int) -> dict[str, np.ndarray]:
    """The library's WKV state entries back as ``blocks.i.att.time_state`` (H, value, key) float32."""
    return {canonical_name(i): np.ascontiguousarray(np.swapaxes(entries[i, ENTRY], 1, 2)).astype(np.float32)
            for i in range(n_layer)}
