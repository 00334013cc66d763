"""Checkpoint -> the parameters of a compiled library, without the compiler.

The runtime loads a raw checkpoint with this, and ``convert_weight`` writes a tensor cache with
it: both walk the library's parameter list (its ``_metadata["params"]``, or the compiler's view of
the same model) and make each entry from the version's name table. Parameters the quantization
swapped in come in pairs, ``X.q_weight`` + ``X.q_scale``, made from the table's ``X.weight``;
a ``_t`` suffix means the transpose (``hidden_major``).
Everything is read as float32 and cast once at the end: quantizing fp16-rounded weights would
round twice.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .errors import CheckpointError, ConfigError
from .loaders import CanonicalView, detect, open_checkpoint
from .quantization import get_mode
from .quantization import group_quant as gq
from .registry import ModelSpec, get_spec

QUANTIZED_SUFFIXES = ("q_weight", "q_scale")
# ``X.weight_t`` (and its ``X.q_weight_t`` / ``X.q_scale_t``) is the transpose of the table's
# ``X.weight``: the channel mix's value stored hidden-major (models/layers.py ``FFNValue``)
TRANSPOSED = "_t"


def hidden_major(w: np.ndarray) -> np.ndarray:
    """The checkpoint's ``ffn.value`` (C, F) as (F, C): one contiguous row per hidden unit, so a
    decode step can skip the rows of the zeros of ``relu(K x)^2`` (tir_kernels/ffn_value/)."""
    return np.ascontiguousarray(w.T)


@dataclasses.dataclass
class Weights:
    """A checkpoint with its detected version, layout (as a canonical view) and inferred config."""

    spec: ModelSpec
    view: CanonicalView
    config: object

    @property
    def path(self) -> Path:
        return self.view.path

    def initial_state(self) -> dict[tuple[int, str], np.ndarray] | None:
        """A state-tuned checkpoint's initial state entries ``{(layer, name): array}`` (RWKV-5/6
        ``att.time_state``), None when the checkpoint has none or its version knows none."""
        read = getattr(self.spec.names, "initial_state", None)
        return read(self.view, self.config) if read else None


def open_weights(path: str | Path, overrides: dict | None = None) -> Weights:
    """Open, detect and check a checkpoint (names and shapes only: a bad checkpoint fails here,
    before minutes of compilation)."""
    ckpt = open_checkpoint(path)
    name, view = detect(ckpt)
    spec = get_spec(name)
    config = spec.names.infer_config(view, **(overrides or {}))
    spec.names.table(config).check(view)
    return Weights(spec, view, config)


def check_matches(weights: Weights, model_type: str, built: dict) -> None:
    """A checkpoint must be of the library's version and shapes."""
    if weights.spec.name != model_type:
        raise ConfigError(f"checkpoint {weights.path} is {weights.spec.name.upper()}, but the library was built "
                          f"for {model_type.upper()}; build a library for it")
    for key, value in built.items():
        if key in ("n_layer", "n_embd", "vocab_size", "head_size") or key.startswith("dim_"):
            have = getattr(weights.config, key, value)
            if have != value:
                raise ConfigError(f"checkpoint {weights.path} has {key}={have} but the library was built "
                                  f"for {key}={value}; build a library for this checkpoint")


def library_params(weights: Weights, config, params: Sequence[dict], quantization: str
                   ) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(name, array)`` for every entry of ``params`` (``[{"name", "shape", "dtype"}]``, the
    library's order) from ``weights``, with the numerics of ``config`` (e.g. rescale_every), one
    tensor (pair) at a time."""
    mode = get_mode(quantization)
    table = weights.spec.names.table(config)
    pending: dict[str, dict[str, np.ndarray]] = {}
    for p in params:
        name, shape, dtype = p["name"], tuple(p["shape"]), p["dtype"]
        base, _, suffix = name.rpartition(".")
        transposed = suffix.endswith(TRANSPOSED)
        suffix = suffix.removesuffix(TRANSPOSED)
        if suffix in QUANTIZED_SUFFIXES:
            if not mode.quantized:
                raise ConfigError(f"parameter {name} is quantized but the mode {quantization} is not")
            key = base + TRANSPOSED * transposed
            if key not in pending:
                w = table.read(weights.view, base + ".weight")
                pending[key] = dict(zip(QUANTIZED_SUFFIXES, gq.quantize(
                    hidden_major(w) if transposed else w, mode.weight_bits, mode.group_size, mode.act_dtype)))
            array = pending[key].pop(suffix)
            if not pending[key]:
                del pending[key]
        elif transposed:
            array = hidden_major(table.read(weights.view, f"{base}.{suffix}"))
        else:
            array = table.read(weights.view, name)
        if tuple(array.shape) != shape:
            raise CheckpointError(f"{weights.path}: parameter {name} comes out as {tuple(array.shape)}, "
                                  f"the library wants {shape}")
        yield name, array.astype(dtype, copy=False)
