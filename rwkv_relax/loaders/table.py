"""Applying a version's exhaustive name table to a checkpoint seen in canonical names."""
from __future__ import annotations

import dataclasses
from typing import Callable, Collection, Mapping

import numpy as np

from ..errors import CheckpointError
from . import transforms as tf
from .layouts import CanonicalView

# what a weight may be stored as (float64 converters exist; it is cast exactly like the rest):
# an integer, bool or complex tensor where a weight belongs means a corrupt or foreign file
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


@dataclasses.dataclass(frozen=True)
class ParamSource:
    """A model parameter = ``transform(*checkpoint tensors named in sources)``.

    ``sources`` are canonical (BlinkDL) names; ``transform`` is a named function whose docstring
    says why the checkpoint's form differs from what the compiled model consumes.
    """

    sources: tuple[str, ...]
    transform: Callable[..., np.ndarray]


def as_stored(name: str) -> ParamSource:
    """The parameter ``name`` is the checkpoint tensor of the same name, as it is."""
    return ParamSource((name,), tf.identity)


def outer_entries(C: int, V: int) -> tuple[dict, dict]:
    """``(shapes, params)`` of the tensors around the blocks, the same in every version: the
    embedding (with ``blocks.0.ln0`` folded in), the final LayerNorm and the head. A version's
    table starts from them and adds its blocks."""
    shapes = {"emb.weight": (V, C), "blocks.0.ln0.weight": (C,), "blocks.0.ln0.bias": (C,),
              "ln_out.weight": (C,), "ln_out.bias": (C,), "head.weight": (V, C)}
    params = {"embeddings.weight": ParamSource(("emb.weight", "blocks.0.ln0.weight", "blocks.0.ln0.bias"),
                                               tf.fold_ln0_into_embedding),
              **{name: as_stored(name) for name in ("ln_out.weight", "ln_out.bias", "head.weight")}}
    return shapes, params


@dataclasses.dataclass(frozen=True)
class TensorTable:
    """What a version expects of a checkpoint: every canonical tensor with its shape, and how each
    model parameter is made from them. ``ignored`` tensors may be there, in any shape, or not, and
    are never read (RWKV-7 layer 0's value-residual LoRA: BlinkDL files have it, flash-linear-
    attention's drop it, GGUF conversions write dummies). ``optional`` tensors may be absent, but
    when present they must have their shape (RWKV-6's state-tuned ``att.time_state``)."""

    shapes: Mapping[str, tuple[int, ...]]
    params: Mapping[str, ParamSource]
    ignored: Collection[str] = ()
    optional: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)

    def check(self, view: CanonicalView) -> None:
        """Fail on the first unmapped, missing, unexpected or mis-shaped tensor, naming it as the
        file names it."""
        if view.unmapped:
            raise CheckpointError(f"{view.path}: unexpected tensor '{view.unmapped[0]}' (no {view.layout.name} "
                                  "layout rule maps it); is the checkpoint for another RWKV version or layout?")
        present = set(view.names())
        for canon, shape in self.shapes.items():
            if canon not in present:
                raise CheckpointError(f"{view.path}: missing tensor '{view.file_name(canon)}'; "
                                      "the checkpoint is incomplete or of another model")
            got = view.shape(canon)
            if tuple(got) != tuple(shape):
                raise CheckpointError(f"{view.path}: tensor '{view.file_name(canon)}' has shape "
                                      f"{tuple(got)}, expected {tuple(shape)}")
            _check_dtype(view, canon)
        for canon, shape in self.optional.items():
            if canon in present and tuple(view.shape(canon)) != tuple(shape):
                raise CheckpointError(f"{view.path}: tensor '{view.file_name(canon)}' has shape "
                                      f"{tuple(view.shape(canon))}, expected {tuple(shape)}")
            if canon in present:
                _check_dtype(view, canon)
        for canon in view.names():
            if canon not in self.shapes and canon not in self.ignored and canon not in self.optional:
                raise CheckpointError(f"{view.path}: unexpected tensor '{view.file_name(canon)}' (not part of "
                                      "this model's table); is the checkpoint for another RWKV version or layout?")
        used = {s for src in self.params.values() for s in src.sources}
        unused = sorted(set(self.shapes) - used)
        if unused:  # a table bug, not a user error
            raise AssertionError(f"name table never reads {unused[:5]}")

    def read(self, view: CanonicalView, name: str) -> np.ndarray:
        """Parameter ``name`` as the model reads it (float32 unless the transform says otherwise)."""
        entry = self.params[name]
        arrays = []
        for canon in entry.sources:
            arr = view.get(canon)
            if not np.all(np.isfinite(arr)):
                raise CheckpointError(f"{view.path}: tensor '{view.file_name(canon)}' holds NaN or Inf values; "
                                      "the checkpoint is corrupt")
            arrays.append(arr)
        return np.ascontiguousarray(entry.transform(*arrays))


def _check_dtype(view: CanonicalView, canon: str) -> None:
    dtype = view.dtype(canon)
    if dtype not in FLOAT_DTYPES:
        raise CheckpointError(f"{view.path}: tensor '{view.file_name(canon)}' is {dtype}, but RWKV weights are "
                              "floating point (float32, float16, bfloat16); the file is corrupt or not an RWKV "
                              "weight file")
