"""Lazy readers for BlinkDL ``.pth``, Hugging Face ``.safetensors`` / ``.bin`` and their folders.

Pickles are opened with ``torch.load(weights_only=True)``: a checkpoint that needs arbitrary code
to unpickle is refused, never run. torch and safetensors are imported when a file is opened, so the
name tables that import this module stay light.
"""
from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import CheckpointError

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
# safetensors' dtype names -> torch's, so that Checkpoint.dtype speaks one language
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                       "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
                       "BOOL": "bool"}


class Checkpoint:
    """Tensors by name, read on demand; ``hf_config`` holds a folder's ``config.json`` if any."""

    def __init__(self, path: Path, tensors: dict, hf_config: dict | None = None):
        self.path = path
        self._tensors = tensors  # name -> torch.Tensor (mmapped) or a zero-arg loader
        self.hf_config = hf_config or {}

    def names(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensors[name].shape)

    def dtype(self, name: str) -> str:
        """The stored dtype, torch's name without the prefix ("float16", "bfloat16", ...)."""
        return str(self._tensors[name].dtype).replace("torch.", "")

    def get(self, name: str) -> np.ndarray:
        """The tensor as a float32/int numpy array (bf16 and fp16 are widened to fp32)."""
        import torch
        t = self._tensors[name]
        if isinstance(t, _LazySafetensor):
            t = t.load()
        if t.dtype in (torch.bfloat16, torch.float16, torch.float64):
            t = t.float()
        return t.detach().cpu().numpy()

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self._tensors:
            yield name, self.get(name)


class _LazySafetensor:
    """One tensor of a safetensors file, opened when first read (keeps peak memory at one tensor)."""

    def __init__(self, path: Path, name: str, shape: tuple[int, ...], dtype: str):
        self.path, self.name, self.shape, self.dtype = path, name, shape, dtype

    def load(self):
        from safetensors import safe_open
        with safe_open(str(self.path), framework="pt") as f:
            return f.get_tensor(self.name)


def _read_torch(path: Path) -> dict:
    import torch
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy, non-zip format
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise CheckpointError(
                f"{path} holds pickled objects other than tensors ({first[:160]}); refusing to run "
                "its code -- save a plain state_dict of tensors or a .safetensors file") from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({first[:160]}); "
                              "re-download or re-export it") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{path} is truncated or not a PyTorch checkpoint ({first[:160]}); "
                              "re-download or re-export it") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a dict of tensors; "
                              "save model.state_dict() instead")
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry '{name}' is a {type(value).__name__}, not a tensor; "
                                  "a checkpoint must hold only tensors")
    return obj


def _read_safetensors(path: Path) -> dict:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
            out = {n: _LazySafetensor(path, n, tuple(f.get_slice(n).get_shape()),
                                      _SAFETENSORS_DTYPES.get(f.get_slice(n).get_dtype(), f.get_slice(n).get_dtype()))
                   for n in names}
    except Exception as err:  # safetensors raises its own SafetensorError (no public class)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{path} is truncated or not a safetensors file ({first[:160]}); "
                              "re-download or re-export it") from None
    expected_end = max((_end_offset(path)), 0)
    if expected_end and path.stat().st_size < expected_end:
        raise CheckpointError(f"{path} is truncated ({path.stat().st_size} of {expected_end} bytes); "
                              "re-download it")
    return out


def _end_offset(path: Path) -> int:
    """Bytes a safetensors file must have according to its own header."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return 8 + n + (max(ends) if ends else 0)


def file_kind(head: bytes, size: int) -> str:
    """What a file's first bytes ``head`` (16 of them, fewer for a shorter file of ``size``
    bytes) say it is: "zip" (torch.save), "pickle" (legacy torch.save), "safetensors", "gguf",
    "empty" or "unknown". Loaders are picked by this, not by the suffix, so that a misnamed file
    still loads and a foreign one is named for what it is not."""
    if not head:
        return "empty"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[:4] == b"GGUF":
        return "gguf"
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:  # PROTO opcode, protocol 2..5
        return "pickle"
    if len(head) >= 9 and 2 <= int.from_bytes(head[:8], "little") <= size - 8 and head[8:9] == b"{":
        return "safetensors"
    return "unknown"


def _read_file(path: Path) -> dict:
    with open(path, "rb") as f:
        head = f.read(16)
    kind = file_kind(head, path.stat().st_size)
    if kind == "safetensors":
        return _read_safetensors(path)
    if kind in ("zip", "pickle"):
        return _read_torch(path)
    if kind == "empty":
        raise CheckpointError(f"{path} is empty (0 bytes); re-download or re-export it")
    if kind == "gguf":
        raise CheckpointError(f"{path} is a GGUF file (llama.cpp's format), not a checkpoint rwkv_relax reads; "
                              "give the original BlinkDL .pth or Hugging Face .safetensors")
    raise CheckpointError(f"{path} is not a checkpoint: not a zip archive (torch.save), not a pickle (legacy "
                          f"torch.save), not safetensors (first bytes: {head[:8].hex(' ')}); expected one of "
                          f"{', '.join(WEIGHT_SUFFIXES)}, complete")


def _weight_files(folder: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [folder / s for s in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    files = sorted(p for p in folder.iterdir() if p.suffix in (".pth", ".safetensors"))
    if len(files) == 1:
        return files
    if not files:
        raise CheckpointError(f"{folder} holds no checkpoint (.pth, .safetensors, .bin)")
    raise CheckpointError(f"{folder} holds several checkpoints ({', '.join(p.name for p in files)}); "
                          "pass one file")


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open a checkpoint file or folder lazily."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    hf_config = None
    if path.is_dir():
        files = _weight_files(path)
        cfg_file = path / "config.json"
        if cfg_file.is_file():
            try:
                hf_config = json.loads(cfg_file.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise CheckpointError(f"{cfg_file} is not valid JSON ({err}); fix or remove it") from None
            if not isinstance(hf_config, dict):
                raise CheckpointError(f"{cfg_file} holds a {type(hf_config).__name__}, not a JSON object")
    else:
        files = [path]
    tensors: dict = {}
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"checkpoint shard {f} is missing")
        for name, t in _read_file(f).items():
            if name in tensors:
                raise CheckpointError(f"{path}: tensor '{name}' appears in two shards")
            tensors[name] = t
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors")
    return Checkpoint(path, tensors, hf_config)
