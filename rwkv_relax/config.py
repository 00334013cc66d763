"""Config plumbing shared by every architecture: presets, JSON files, unknown keys kept aside,
and :class:`RWKVConfig`, the fields every RWKV version has.

Each version defines one dataclass deriving from :class:`RWKVConfig` (``versions/<v>/config.py``).
No TVM here: configs are read by the loaders and the runtime too.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

CHAT_CONFIG = "mlc-chat-config.json"  # MLC-LLM model directory config (written by gen_config)

C = TypeVar("C", bound="ConfigBase")


@dataclasses.dataclass
class ConfigBase:
    """Base of the per-architecture configs.

    ``extra`` keeps keys a file had that this config does not know (e.g. fields written by a newer
    version or by another tool) so that writing the config back loses nothing.
    """

    extra: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    model_type = "base"

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        data = dict(data)
        declared = data.pop("model_type", cls.model_type)
        if declared != cls.model_type:
            raise ConfigError(
                f"config is for model_type '{declared}', not '{cls.model_type}'; "
                f"use the {declared} model or fix the file")
        names = {f.name for f in dataclasses.fields(cls) if f.init and f.name != "extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        extra.update(data.get("extra", {}) if isinstance(data.get("extra"), dict) else {})
        extra.pop("extra", None)
        try:
            return cls(**known, extra=extra)
        except TypeError as err:
            raise ConfigError(f"{cls.__name__}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        out = {"model_type": self.model_type}
        for f in dataclasses.fields(self):
            if f.name != "extra" and f.init:
                out[f.name] = getattr(self, f.name)
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out

    @classmethod
    def from_file(cls: type[C], path: str | Path) -> C:
        return cls.from_dict(read_config_json(path))

    @classmethod
    def from_preset(cls: type[C], name: str) -> C:
        return cls.from_dict(read_preset(name))

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


FFN_VALUE_LAYOUTS = ("hidden_major", "dense")


@dataclasses.dataclass
class RWKVConfig(ConfigBase):
    """Fields every RWKV version has. Version configs add theirs and call ``super().__post_init__``."""

    n_layer: int = 0
    n_embd: int = 0
    vocab_size: int = 0
    dim_att: int = 0  # 0: n_embd
    dim_ffn: int = 0  # 0: the version's default
    layer_norm_eps: float = 1e-5
    rescale_every: int = 0  # halve the residual every N layers (fp16 overflow guard); 0: never
    dtype: str = "float32"
    prefill_chunk_size: int = 512
    max_batch_size: int = 8
    fp32_layers: list = dataclasses.field(default_factory=list)  # layers kept fp32 in an fp16 model
    # the channel mix's value matrix: "dense" the checkpoint's (C, F) through the ordinary matmul;
    # "hidden_major" (F, C), read only where relu(K x)^2 is nonzero (tir_kernels/ffn_value/): it
    # wins on sparse channel mixes (12x768, 90% zeros: 1.13x q0f32 decode) but not at the ~50% of
    # random weights (1.02x q0f32, 0.82x q4f16_1 decode), so it is opt-in
    ffn_value_layout: str = "dense"

    def default_dim_ffn(self) -> int:
        raise NotImplementedError

    def __post_init__(self):
        name = type(self).__name__
        check_field_types(self)
        if min(self.n_layer, self.n_embd, self.vocab_size) <= 0:
            raise ConfigError(f"{name} needs positive n_layer, n_embd, vocab_size "
                              f"(got {self.n_layer}, {self.n_embd}, {self.vocab_size})")
        if min(self.dim_att, self.dim_ffn, self.rescale_every) < 0:
            raise ConfigError(f"{name}: dim_att, dim_ffn, rescale_every must be >= 0 (0: default) "
                              f"(got {self.dim_att}, {self.dim_ffn}, {self.rescale_every})")
        self.dim_att = self.dim_att or self.n_embd
        self.dim_ffn = self.dim_ffn or self.default_dim_ffn()
        bad = [i for i in self.fp32_layers if not 0 <= int(i) < self.n_layer]
        if bad:
            raise ConfigError(f"fp32_layers {bad} are not layers of this {self.n_layer}-layer model")
        if self.dtype not in ("float32", "float16"):
            raise ConfigError(f"dtype must be float32 or float16, not {self.dtype!r}")
        if self.ffn_value_layout not in FFN_VALUE_LAYOUTS:
            raise ConfigError(f"ffn_value_layout must be one of {', '.join(FFN_VALUE_LAYOUTS)}, "
                              f"not {self.ffn_value_layout!r}")


def is_integer(x) -> bool:
    """An integer as JSON and numpy give them (bool is not one)."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_finite_number(x) -> bool:
    """A finite int or float (bool, NaN and infinities are not)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _type_error(cfg, field: str, want: str, value) -> ConfigError:
    return ConfigError(f"{type(cfg).__name__}: {field} must be {want}, got {value!r} "
                       f"({type(value).__name__}); fix the config file, preset or --overrides")


def check_field_types(cfg: ConfigBase) -> None:
    """Each declared field holds a value of its annotated type (JSON has no schema: a string where a
    number belongs would otherwise surface as a Python comparison error much later). Integral
    floats (``6.0``) become ints; ints become floats where a float is declared."""
    for f in dataclasses.fields(cfg):
        if f.name == "extra" or not f.init:
            continue
        value, kind = getattr(cfg, f.name), str(f.type)
        if kind == "int":
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not is_integer(value):
                raise _type_error(cfg, f.name, "an integer", value)
            value = int(value)
        elif kind == "float":
            if not is_finite_number(value):
                raise _type_error(cfg, f.name, "a finite number", value)
            value = float(value)
        elif kind == "str":
            if not isinstance(value, str):
                raise _type_error(cfg, f.name, "a string", value)
        elif kind == "list":
            if not isinstance(value, list) or not all(is_integer(v) for v in value):
                raise _type_error(cfg, f.name, "a list of integers", value)
            value = [int(v) for v in value]
        setattr(cfg, f.name, value)


# ---- presets: package data (rwkv_relax/presets/*.json), found through importlib.resources ----------
def _preset_files() -> dict[str, Any]:
    return {p.name[:-len(".json")]: p for p in resources.files("rwkv_relax").joinpath("presets").iterdir()
            if p.name.endswith(".json")}


def list_presets() -> list[str]:
    return sorted(_preset_files())


def read_preset(name: str) -> dict[str, Any]:
    files = _preset_files()
    if name not in files:
        raise ConfigError(f"unknown preset '{name}'; valid presets: {', '.join(sorted(files))}")
    return _parse_config(files[name].read_text(), f"preset {name}")


def read_config_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not valid JSON ({err}); fix or regenerate it") from None
    return _parse_config(text, f"config file {path}")


def _parse_config(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{what} is not valid JSON ({err}); fix or regenerate it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must hold a JSON object")
    # mlc-chat-config.json nests the architecture config under model_config.
    if "model_config" in data and isinstance(data["model_config"], dict):
        inner = dict(data["model_config"])
        inner.setdefault("model_type", data.get("model_type"))
        return inner
    return data
