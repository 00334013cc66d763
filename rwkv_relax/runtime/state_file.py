"""State files: one sequence's full RNN state in a safetensors file, loadable into a fresh sequence.

Tensors: ``layers.{i}.{name}`` for every layer ``i`` and state entry ``name`` (the library's
``metadata["state"]`` order, dtypes as stored by the runtime), plus ``tokens`` (int32, the ids the
state has consumed) when the caller knows them. The safetensors metadata (str -> str) records
what the state belongs to:

* ``format`` / ``format_version``: ``rwkv_relax.state`` / ``1``;
* ``model_type``, ``quantization``, ``model_name`` (informational);
* ``config_fingerprint``: the model config, less the fields that do not change numerics
  (:data:`RUNTIME_FIELDS`);
* ``params_fingerprint``: the parameter list (names, shapes, dtypes) and quantization;
* ``weights_fingerprint``: the tensor cache's shard md5s, when the model was loaded from one
  (two checkpoints of one shape differ only here);
* ``n_tokens``: the token count;
* anything the caller adds (e.g. the conversation, as JSON).

A state is refused by a model whose fingerprints differ: its numbers would be meaningless there
even when the shapes happen to fit.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import RWKVRelaxError

if TYPE_CHECKING:
    from .model import CompiledModel, State

FORMAT, FORMAT_VERSION = "rwkv_relax.state", "1"
# config fields that only size runtime buffers or name the model: a state moves freely across them
RUNTIME_FIELDS = ("name", "prefill_chunk_size", "max_batch_size")
IDENTITY_KEYS = ("model_type", "config_fingerprint", "params_fingerprint", "weights_fingerprint")
_LAYER_KEY = re.compile(r"layers\.(\d+)\.(\w+)")


class StateFileError(RWKVRelaxError):
    """A state file that is missing, unreadable, or saved from another model."""


@dataclasses.dataclass
class LoadedState:
    state: "State"
    tokens: list[int] | None  # the ids the state consumed, if they were saved
    metadata: dict[str, str]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def model_identity(model: "CompiledModel") -> dict[str, str]:
    """The metadata entries that tie a state to ``model``."""
    md = model.metadata
    config = {k: v for k, v in md["model_config"].items() if k not in RUNTIME_FIELDS}
    return {
        "model_type": md["model_type"],
        "quantization": md["quantization"],
        "model_name": str(md.get("model_name", "")),
        "config_fingerprint": _digest(config),
        "params_fingerprint": _digest([md["params"], md["quantization"],
                                       md.get("keep_embedding_head", False)]),
        "weights_fingerprint": model.weights_fingerprint or "",
    }


def save_state(path: str | Path, model: "CompiledModel", state: "State", tokens=None,
               extra: dict[str, str] | None = None) -> Path:
    """Write ``state`` (all layers, every entry) to ``path``; ``tokens``: the ids it consumed."""
    from safetensors.numpy import save_file

    from .._fs import atomic_write
    tensors = {f"layers.{layer}.{name}": np.ascontiguousarray(value)
               for (layer, name), value in model.state_tensors(state).items()}
    if tokens is not None:
        tokens = np.asarray(list(tokens), dtype=np.int32)
        if tokens.size != state.length:
            raise StateFileError(f"{tokens.size} tokens given for a state of {state.length}")
        tensors["tokens"] = tokens
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, **model_identity(model),
                "n_tokens": str(state.length)}
    for key, value in (extra or {}).items():
        if key in metadata or key == "tokens":
            raise StateFileError(f"state file metadata key '{key}' is reserved")
        metadata[key] = str(value)
    return atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_state_file(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and metadata of a state file, checked to be one."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise StateFileError(f"state file {path} does not exist")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as err:  # safetensors raises its own error type (or OSError) for bad files
        why = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise StateFileError(f"{path} is not a readable state file (truncated or not safetensors: "
                             f"{why})") from None
    if metadata.get("format") != FORMAT:
        raise StateFileError(f"{path} is a safetensors file but not an rwkv_relax state file "
                             f"(no format={FORMAT} in its metadata)")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise StateFileError(f"{path} is state file version {metadata.get('format_version')}; this "
                             f"rwkv_relax reads version {FORMAT_VERSION}")
    return tensors, metadata


def check_identity(path: str | Path, metadata: dict[str, str], model: "CompiledModel") -> None:
    """Refuse a state saved from another model, naming both."""
    mine = model_identity(model)
    for key in IDENTITY_KEYS:
        theirs = metadata.get(key, "")
        if key == "weights_fingerprint" and not (theirs and mine[key]):
            continue  # one side was not loaded from a tensor cache: nothing to compare
        if theirs != mine[key]:
            what = {"model_type": "architecture", "config_fingerprint": "model config",
                    "params_fingerprint": "parameter list / quantization",
                    "weights_fingerprint": "weights"}[key]
            raise StateFileError(
                f"{path} was saved from another model ({metadata.get('model_type')} "
                f"{metadata.get('quantization')} '{metadata.get('model_name')}'; its {what} differs from "
                f"this {mine['model_type']} {mine['quantization']} '{mine['model_name']}'); load it with "
                "the model it was saved from")


def load_state(path: str | Path, model: "CompiledModel") -> LoadedState:
    """A fresh sequence of ``model`` holding the state saved in ``path``."""
    tensors, metadata = read_state_file(path)
    check_identity(path, metadata, model)
    try:
        n_tokens = int(metadata.get("n_tokens", ""))
    except ValueError:
        raise StateFileError(f"{path}: n_tokens '{metadata.get('n_tokens')}' is not a number") from None
    tokens = tensors.pop("tokens", None)
    if tokens is not None:
        if tokens.ndim != 1 or tokens.size != n_tokens:
            raise StateFileError(f"{path}: 'tokens' has shape {list(tokens.shape)}, n_tokens is {n_tokens}")
        tokens = tokens.astype(np.int64).tolist()
    layers = {}
    for key, value in tensors.items():
        match = _LAYER_KEY.fullmatch(key)
        if match is None:
            raise StateFileError(f"{path}: unexpected tensor '{key}' (want layers.<i>.<name> and tokens)")
        layers[int(match[1]), match[2]] = value
    try:
        state = model.load_state(layers, length=n_tokens)
    except RWKVRelaxError as err:
        raise StateFileError(f"{path}: {err}") from None
    return LoadedState(state, tokens, metadata)
