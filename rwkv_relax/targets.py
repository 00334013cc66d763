"""Target presets: one table from a user-facing name to a TVM target, a compile pipeline and an
artifact format. Only what this machine can build and check is listed."""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

import tvm
from tvm import relax

from .errors import RWKVRelaxError


def host_cpu() -> str:
    """The host CPU name LLVM knows (TVM's default llvm target is generic x86-64, unvectorised)."""
    return tvm.get_global_func("target.llvm_get_system_cpu")()


def _llvm_target(arch: str | None) -> dict:
    return {"kind": "llvm", "mcpu": arch or host_cpu(), "num-cores": os.cpu_count() or 1}


@dataclasses.dataclass(frozen=True)
class TargetPreset:
    name: str
    make_target: Callable[[str | None], dict]  # arch override -> TVM target dict
    extension: str
    description: str

    def target(self, arch: str | None = None) -> tvm.target.Target:
        return tvm.target.Target(self.make_target(arch))


PRESETS: dict[str, TargetPreset] = {
    "llvm": TargetPreset("llvm", _llvm_target, ".so", "this machine's CPU (LLVM, host -mcpu)"),
}


def get_target(name: str) -> TargetPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise RWKVRelaxError(f"unknown target '{name}'; valid targets: {', '.join(PRESETS)}") from None


def relax_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """Legalize + operator fusion. Without FuseOps every op is its own kernel (5x slower decode)."""
    return relax.get_default_pipeline(target)
