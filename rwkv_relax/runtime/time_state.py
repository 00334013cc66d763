"""State-tuned initial states for RWKV-5/6 models: ``blocks.i.att.time_state`` files, as
RWKV-PEFT's state tuning writes them, loaded as a sequence's state and written back in the same
layout (H, value, key) per layer, so that a state tuned elsewhere, or one reached here by a
prompt, can travel both ways. The library's own state files (``state_file.py``) hold every entry
of every layer with the model's fingerprints; a time_state file holds only the WKV matrices and
fits any model of the same shape.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import RWKVRelaxError
from ..loaders import open_checkpoint
from ..loaders import time_state as ts
from ..registry import get_spec

if TYPE_CHECKING:
    from .model import CompiledModel, State

SUFFIXES = (".safetensors", ".pth", ".pt")


class TimeStateError(RWKVRelaxError):
    """A time_state file that is missing, malformed, or for another model."""


def supports_time_state(model_type: str) -> bool:
    return hasattr(get_spec(model_type).names, "initial_state")


def _check_model(model: "CompiledModel", path) -> None:
    md = model.metadata
    if not supports_time_state(md["model_type"]):
        raise TimeStateError(f"{path}: {md['model_type'].upper()} has no time_state (state tuning exists for "
                             "RWKV-5 and RWKV-6); save a state file instead")


def read_time_state(path: str | Path, model: "CompiledModel") -> dict[tuple[int, str], np.ndarray]:
    """A time_state file's matrices as the library's state entries ``{(layer, "att_kv"): array}``."""
    path = Path(path)
    _check_model(model, path)
    try:
        wkv = ts.collect(path, open_checkpoint(path).items(), model.n_layer)
    except RWKVRelaxError as err:
        raise TimeStateError(str(err)) from None
    if wkv is None:
        raise TimeStateError(f"{path} holds no blocks.<i>.att.time_state tensors; is it a state-tuning file?")
    return wkv


def load_time_state(path: str | Path, model: "CompiledModel") -> "State":
    """A fresh sequence of ``model`` starting from the time_state in ``path``."""
    wkv = read_time_state(path, model)
    try:
        return model.load_state(wkv, partial=True)  # the token shifts start at zero
    except RWKVRelaxError as err:
        raise TimeStateError(f"{path}: {err}") from None


def save_time_state(path: str | Path, model: "CompiledModel", state: "State") -> Path:
    """Write ``state``'s WKV matrices as ``blocks.i.att.time_state`` (H, value, key) float32, a
    state-tuning file (``.safetensors``, or a torch pickle for ``.pth`` / ``.pt``). The token shifts
    are not part of that format and are dropped."""
    from .._fs import atomic_write
    path = Path(path)
    _check_model(model, path)
    if path.suffix not in SUFFIXES:
        raise TimeStateError(f"{path}: write a time_state as one of {', '.join(SUFFIXES)}")
    tensors = ts.to_file_layout({(i, ts.ENTRY): model.read_state(state, i, ts.ENTRY)
                                 for i in range(model.n_layer)}, model.n_layer)

    def write(tmp):
        if path.suffix == ".safetensors":
            from safetensors.numpy import save_file
            save_file(tensors, tmp)
        else:
            import torch
            torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, tmp)
    return atomic_write(path, write)
