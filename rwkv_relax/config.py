"""Config plumbing shared by every architecture: presets, JSON files, unknown keys kept aside.

Each architecture defines one dataclass deriving from :class:`ConfigBase` (in ``models/``);
this module only knows how to fill one from a dict and where presets live.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"
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


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def read_preset(name: str) -> dict[str, Any]:
    path = PRESET_DIR / f"{name}.json"
    if not path.is_file():
        raise ConfigError(f"unknown preset '{name}'; valid presets: {', '.join(list_presets())}")
    return read_config_json(path)


def read_config_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} is not valid JSON ({err}); fix or regenerate it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    # mlc-chat-config.json nests the architecture config under model_config.
    if "model_config" in data and isinstance(data["model_config"], dict):
        inner = dict(data["model_config"])
        inner.setdefault("model_type", data.get("model_type"))
        return inner
    return data
