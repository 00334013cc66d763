"""One entry per RWKV version. Adding a version = its folder ``versions/<name>/`` + one line here.

A version's folder holds everything specific to it, each part in its own module:

  ``__init__.py``   ``SPEC = ModelSpec(...)``
  ``config.py``     the config dataclass (no TVM: loaders and the runtime read it)
  ``names.py``      layouts, detection signature, the exhaustive tensor table, config inference
  ``model.py``      the nn.Modules (the math; kernels through ``models/ops.py``)
  ``reference.py``  a float64 numpy model built on the kernels' numpy twins
  ``random.py``     random checkpoints with realistic scales, in BlinkDL names

Specs are imported on first use, so importing the registry (for a CLI's ``--help``) costs nothing.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
from types import ModuleType

from .errors import ConfigError

VERSIONS = {
    "rwkv4": "rwkv_relax.versions.rwkv4",
    "rwkv5": "rwkv_relax.versions.rwkv5",
    "rwkv6": "rwkv_relax.versions.rwkv6",
    "rwkv7": "rwkv_relax.versions.rwkv7",
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the shared stages need to know of one version. ``package`` is the version's folder;
    its TVM-dependent parts (model, reference, random checkpoints) load when first asked for."""

    name: str  # the model_type written into configs and library metadata
    title: str  # for people: "RWKV-5.2"
    config_cls: type
    names: ModuleType
    package: str

    def part(self, name: str) -> ModuleType:
        """One module of the version's folder ("model", "reference", "random", ...)."""
        return importlib.import_module(f"{self.package}.{name}")

    @property
    def model_cls(self):
        """The nn.Module class (imports TVM)."""
        return self.part("model").MODEL

    def reference(self, cfg: dict, params: dict):
        """The float64 numpy model on the library's own (de-quantized) parameters."""
        return self.part("reference").REFERENCE(cfg, params)

    def random_tensors(self, **shape) -> dict:
        """A random checkpoint in canonical (BlinkDL) names, float32."""
        return self.part("random").random_tensors(**shape)


def get_spec(name: str) -> ModelSpec:
    if not isinstance(name, str) or name not in VERSIONS:
        raise ConfigError(f"unknown model_type {name!r}; supported: {', '.join(VERSIONS)}")
    return _load_spec(name)


@functools.cache
def _load_spec(name: str) -> ModelSpec:
    return importlib.import_module(VERSIONS[name]).SPEC


def all_specs() -> list[ModelSpec]:
    return [get_spec(name) for name in VERSIONS]
