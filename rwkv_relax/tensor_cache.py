"""Parameters on disk in MLC-LLM's tensor-cache format (``tensor-cache.json`` +
``params_shard_*.bin``), written through ``tvm.contrib.tvmjs`` and verified on load."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path
from typing import Iterable

import numpy as np

from .config import is_integer
from .errors import RWKVRelaxError

CACHE_JSON = "tensor-cache.json"


class TensorCacheError(RWKVRelaxError):
    """A params directory that is incomplete, corrupt or for another model."""


def is_tensor_cache(path: str | Path) -> bool:
    return (Path(path) / CACHE_JSON).is_file()


def write(params: Iterable[tuple[str, np.ndarray]], out_dir: Path, total: int, metadata: dict,
          shard_cap_mb: int = 32) -> None:
    """Stream ``params`` into a tensor cache in ``out_dir`` (raw encoding: bytes kept exactly)."""
    from tqdm import tqdm
    from tvm.contrib import tvmjs
    # a progress bar on terminals only (disable=None)
    bar = tqdm(params, total=total, desc="converting", unit="tensor", leave=False, disable=None)
    with contextlib.redirect_stdout(io.StringIO()):  # tvmjs prints its own chatter
        tvmjs.dump_tensor_cache(bar, str(out_dir),
                                encode_format="raw", meta_data=metadata,
                                shard_cap_mb=shard_cap_mb, show_progress=False)


def read_index(path: str | Path) -> dict:
    """The index, checked against the format (every field the loaders read, with its JSON type)."""
    path = Path(path)
    try:
        index = json.loads((path / CACHE_JSON).read_text())
    except FileNotFoundError:
        raise TensorCacheError(f"{path} has no {CACHE_JSON}; convert weights with "
                               "python -m rwkv_relax.convert_weight") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TensorCacheError(f"{path / CACHE_JSON} is corrupt ({err}); re-run convert_weight") from None
    problem = _index_problem(index)
    if problem:
        raise TensorCacheError(f"{path / CACHE_JSON} is not a tensor-cache index ({problem}); re-run convert_weight")
    return index


_INT = (lambda x: is_integer(x) and x >= 0, "a non-negative integer")
_STR = (lambda x: isinstance(x, str), "a string")
_SHARD = {"dataPath": _STR, "format": _STR, "nbytes": _INT, "records": (lambda x: isinstance(x, list), "a list")}
_RECORD = {"name": _STR, "dtype": _STR, "format": _STR, "nbytes": _INT, "byteOffset": _INT,
           "shape": (lambda x: isinstance(x, list) and all(_INT[0](n) for n in x), "a list of sizes")}


def _index_problem(index) -> str | None:
    """What makes ``index`` unreadable, or None."""
    if not isinstance(index, dict):
        return f"a {type(index).__name__}, not an object"
    if not isinstance(index.get("metadata"), dict):
        return "no 'metadata' object"
    if not isinstance(index.get("records"), list):
        return "no 'records' list"
    for i, shard in enumerate(index["records"]):
        for where, obj, fields in [(f"records[{i}]", shard, _SHARD)] + [
                (f"records[{i}].records[{j}]", rec, _RECORD)
                for j, rec in enumerate(shard.get("records", []) if isinstance(shard, dict) else [])]:
            if not isinstance(obj, dict):
                return f"{where} is not an object"
            for field, (ok, want) in fields.items():
                if field not in obj:
                    return f"{where} has no '{field}'"
                if not ok(obj[field]):
                    return f"{where}.{field} must be {want}, got {obj[field]!r}"
    return None


def verify(path: str | Path) -> dict:
    """Check every shard's size and md5 against the index; return the index."""
    path = Path(path)
    index = read_index(path)
    for shard in index["records"]:
        f = path / shard["dataPath"]
        if not f.is_file():
            raise TensorCacheError(f"params shard {f} is missing; re-run convert_weight")
        size = f.stat().st_size
        if size != shard["nbytes"]:
            raise TensorCacheError(f"params shard {f} has {size} bytes, the index says {shard['nbytes']} "
                                   "(truncated or replaced); re-run convert_weight")
        digest = hashlib.md5(f.read_bytes()).hexdigest()
        if shard.get("md5sum") and digest != shard["md5sum"]:
            raise TensorCacheError(f"params shard {f} fails its md5 check (corrupt); re-run convert_weight")
    return index


def load(path: str | Path, expected: list[dict], device) -> list:
    """Load and verify a tensor cache; return tensors in the order of ``expected``
    (``[{"name", "shape", "dtype"}]``, the library's parameter list)."""
    from tvm.contrib import tvmjs
    path = Path(path)
    index = verify(path)
    stored = {r["name"]: r for shard in index["records"] for r in shard["records"]}
    for p in expected:
        rec = stored.get(p["name"])
        if rec is None:
            raise TensorCacheError(f"{path} lacks parameter '{p['name']}'; the weights were converted "
                                   "for another model or quantization")
        if list(rec["shape"]) != list(p["shape"]) or rec["dtype"] != p["dtype"]:
            raise TensorCacheError(
                f"{path}: parameter '{p['name']}' is {rec['dtype']}{rec['shape']}, the library wants "
                f"{p['dtype']}{p['shape']}; convert with the library's quantization")
    tensors, _ = tvmjs.load_tensor_cache(str(path), device)
    return [tensors[p["name"]] for p in expected]
