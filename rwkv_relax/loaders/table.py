"""Applying an architecture's exhaustive name table to a checkpoint."""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Mapping

import numpy as np

from ..errors import CheckpointError
from .detect import to_canonical, to_layout
from .readers import Checkpoint


@dataclasses.dataclass(frozen=True)
class ParamSource:
    """A model parameter = ``transform(*checkpoint tensors named in sources)``.

    ``sources`` are canonical (BlinkDL) names; ``transform`` is a named function whose docstring
    says why the checkpoint's form differs from what the compiled model consumes.
    """

    sources: tuple[str, ...]
    transform: Callable[..., np.ndarray]


def check_tensor_names(ckpt: Checkpoint, layout: str, expected: Mapping[str, tuple[int, ...]]) -> None:
    """Fail on the first missing, unexpected or mis-shaped tensor, naming it."""
    present = {to_canonical(n, layout): n for n in ckpt.names()}
    for canon, shape in expected.items():
        if canon not in present:
            raise CheckpointError(f"{ckpt.path}: missing tensor '{to_layout(canon, layout)}'; "
                                  "the checkpoint is incomplete or of another model")
        got = ckpt.shape(present[canon])
        if tuple(got) != tuple(shape):
            raise CheckpointError(f"{ckpt.path}: tensor '{present[canon]}' has shape {tuple(got)}, "
                                  f"expected {tuple(shape)}")
    for canon, name in present.items():
        if canon not in expected:
            raise CheckpointError(f"{ckpt.path}: unexpected tensor '{name}' (not part of this model's "
                                  "table); is the checkpoint for another RWKV version or layout?")


def load_params(ckpt: Checkpoint, layout: str, expected: Mapping[str, tuple[int, ...]],
                table: Mapping[str, ParamSource],
                params: Mapping[str, tuple[tuple[int, ...], str]]) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(param name, array)`` in the order of ``params`` (the compiled model's order).

    ``expected`` maps canonical source names to their shapes, ``params`` maps parameter names to
    (shape, dtype). Reads one source tensor set at a time, so memory stays near one tensor.
    """
    check_tensor_names(ckpt, layout, expected)
    missing = [p for p in params if p not in table]
    if missing:  # a table bug, not a user error
        raise AssertionError(f"name table has no entry for parameters {missing[:5]}")
    used = {s for src in table.values() for s in src.sources}
    unused = sorted(set(expected) - used)
    if unused:
        raise AssertionError(f"name table never reads {unused[:5]}")
    present = {to_canonical(n, layout): n for n in ckpt.names()}
    for name, (shape, dtype) in params.items():
        entry = table[name]
        arrays = []
        for canon in entry.sources:
            arr = ckpt.get(present[canon])
            if not np.all(np.isfinite(arr)):
                raise CheckpointError(f"{ckpt.path}: tensor '{present[canon]}' holds NaN or Inf values; "
                                      "the checkpoint is corrupt")
            arrays.append(arr)
        out = np.ascontiguousarray(entry.transform(*arrays))
        if tuple(out.shape) != tuple(shape):
            raise AssertionError(f"{getattr(entry.transform, '__name__', entry.transform)} gave {out.shape} for {name}, want {shape}")
        yield name, out.astype(dtype, copy=False)
