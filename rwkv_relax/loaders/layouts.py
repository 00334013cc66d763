"""File layouts: how one format names (and sometimes shapes) the canonical BlinkDL tensors.

A :class:`Layout` maps each tensor name of a file to its canonical (BlinkDL ``.pth``) name and a
:class:`Reshape` that brings the array to the canonical form; :class:`CanonicalView` then shows a
checkpoint under canonical names, so that each version's name table is written once, in BlinkDL
names. Layouts are exhaustive like the tables: a name that no rule maps stays unmapped and the
table check reports it by its name in the file.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Sequence

import numpy as np

from ..config import is_integer
from ..errors import CheckpointError
from .readers import Checkpoint


@dataclasses.dataclass(frozen=True)
class Reshape:
    """A named, shape-predictable change from a file's array to the canonical array (``array``,
    ``shape``) and back (``inverse``, for writing files in the layout)."""

    name: str
    array: Callable[[np.ndarray], np.ndarray]
    shape: Callable[[tuple], tuple]
    inverse: Callable[[np.ndarray], np.ndarray]


def _transpose_array(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.T)


AS_STORED = Reshape("as stored", lambda x: x, tuple, lambda x: x)
# torch ``nn.Linear`` LoRA factors (flash-linear-attention) hold W^T of BlinkDL's plain matrices
TRANSPOSED = Reshape("transposed", _transpose_array, lambda s: tuple(reversed(s)), _transpose_array)
# BlinkDL keeps per-channel vectors (1, 1, C) for broadcasting; other formats store (C,)
AS_1_1_C = Reshape("as (1, 1, C)", lambda x: x.reshape(1, 1, -1), lambda s: (1, 1, math.prod(s)),
                   lambda x: x.reshape(-1))


class Layout:
    """Interface: ``to_canonical(name) -> (canonical name, Reshape) | None``; ``to_file(canon)``."""

    name = "?"

    def to_canonical(self, name: str) -> tuple[str, Reshape] | None:
        raise NotImplementedError

    def to_file(self, canonical: str) -> str:
        raise NotImplementedError

    def file_tensor(self, canonical: str, array: np.ndarray) -> tuple[str, np.ndarray]:
        """A canonical tensor as this layout stores it (name, array): for writing test files."""
        name = self.to_file(canonical)
        return name, self.to_canonical(name)[1].inverse(array)


class BlinkLayout(Layout):
    """BlinkDL ``.pth``: the canonical names themselves."""

    name = "blink"

    def to_canonical(self, name):
        return name, AS_STORED

    def to_file(self, canonical):
        return canonical


class ComponentLayout(Layout):
    """A layout that renames whole dot-separated components and adds a prefix to every name but
    the listed top-level ones (transformers' RWKV-4/5 layout: ``rwkv.blocks.0.attention...``)."""

    def __init__(self, name: str, components: dict[str, str], prefix: str, unprefixed: Sequence[str]):
        self.name, self.prefix, self.unprefixed = name, prefix, tuple(unprefixed)
        self.components = dict(components)
        self._back = {v: k for k, v in components.items()}

    def to_canonical(self, name):
        if name.startswith(self.prefix):
            name = name[len(self.prefix):]
        elif name not in self.unprefixed:
            return None
        return ".".join(self._back.get(p, p) for p in name.split(".")), AS_STORED

    def to_file(self, canonical):
        name = ".".join(self.components.get(p, p) for p in canonical.split("."))
        return name if canonical in self.unprefixed else self.prefix + name


class PatternLayout(Layout):
    """An explicit table of ``(canonical pattern, file pattern, Reshape)`` rules, tried in order;
    ``{i}`` stands for a layer number, ``{x}`` for the rest of a name (kept as is)."""

    def __init__(self, name: str, rules: Sequence[tuple[str, str, Reshape]]):
        self.name = name
        self.rules = [(canon, file, reshape, _pattern(file), _pattern(canon)) for canon, file, reshape in rules]

    def to_canonical(self, name):
        for canon, _, reshape, file_re, _ in self.rules:
            m = file_re.fullmatch(name)
            if m:
                return canon.format(**m.groupdict()), reshape
        return None

    def to_file(self, canonical):
        for _, file, _, _, canon_re in self.rules:
            m = canon_re.fullmatch(canonical)
            if m:
                return file.format(**m.groupdict())
        raise KeyError(f"layout {self.name} has no name for {canonical}")


def _pattern(template: str) -> re.Pattern:
    out = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{x\}", r"(?P<x>[A-Za-z0-9_.]+)")
    return re.compile(out)


class CanonicalView:
    """A checkpoint seen through a layout: canonical names, canonical shapes and arrays.

    ``unmapped`` lists the file's names that the layout does not know (the table check reports
    them). ``file_name(canonical)`` gives a tensor's name in the file, for error messages."""

    def __init__(self, ckpt: Checkpoint, layout: Layout):
        self.ckpt, self.layout, self.path = ckpt, layout, ckpt.path
        self._map: dict[str, tuple[str, Reshape]] = {}
        self.unmapped: list[str] = []
        for raw in ckpt.names():
            mapped = layout.to_canonical(raw)
            if mapped is None:
                self.unmapped.append(raw)
            else:
                self._map[mapped[0]] = (raw, mapped[1])

    @property
    def hf_config(self) -> dict:
        return self.ckpt.hf_config

    def names(self) -> list[str]:
        return list(self._map)

    def __contains__(self, canonical: str) -> bool:
        return canonical in self._map

    def file_name(self, canonical: str) -> str:
        return self._map[canonical][0] if canonical in self._map else self.layout.to_file(canonical)

    def shape(self, canonical: str) -> tuple[int, ...]:
        raw, reshape = self._map[canonical]
        return reshape.shape(self.ckpt.shape(raw))

    def required_shape(self, canonical: str) -> tuple[int, ...]:
        """``shape``, or a one-line error naming the file's tensor (for inferring a config)."""
        if canonical not in self:
            raise CheckpointError(f"{self.path}: missing tensor '{self.file_name(canonical)}' needed to infer "
                                  "the config")
        return self.shape(canonical)

    def hf_rescale_every(self) -> int | None:
        """A Hugging Face ``config.json``'s ``rescale_every`` (None when absent); transformers reads
        a value <= 0 as "never", which is our 0."""
        if "rescale_every" not in self.hf_config:
            return None
        value = self.hf_config["rescale_every"]
        if not is_integer(value):
            raise CheckpointError(f"{self.path}: config.json's rescale_every must be an integer, got {value!r}")
        return max(value, 0)

    def dtype(self, canonical: str) -> str:
        return self.ckpt.dtype(self._map[canonical][0])

    def get(self, canonical: str) -> np.ndarray:
        raw, reshape = self._map[canonical]
        return reshape.array(self.ckpt.get(raw))


BLINK = BlinkLayout()
# transformers' RwkvForCausalLM (RWKV-4) and the RWKV-5/6 "-HF" remote code: BlinkDL names with
# components renamed and everything but the head under "rwkv."
HF_RWKV = ComponentLayout(
    "hf",
    {"emb": "embeddings", "ln0": "pre_ln", "att": "attention", "ffn": "feed_forward",
     "time_mix_k": "time_mix_key", "time_mix_v": "time_mix_value",
     "time_mix_r": "time_mix_receptance", "time_mix_g": "time_mix_gate"},
    prefix="rwkv.", unprefixed=("head.weight",))
