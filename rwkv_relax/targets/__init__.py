"""Targets: one preset per target (or family), each in its own module with its compile
pipeline, toolchain checks and exporter. Importing this table costs no TVM import."""
from __future__ import annotations

from ..errors import RWKVRelaxError, ToolchainError  # noqa: F401  (ToolchainError re-exported)
from .android import ANDROID
from .apple import IPHONE, METAL
from .cpu import LLVM
from .cuda import CUDA
from .preset import TargetPreset
from .vulkan import VULKAN
from .webgpu import WEBGPU

PRESETS: dict[str, TargetPreset] = {p.name: p for p in (LLVM, CUDA, METAL, IPHONE, ANDROID, WEBGPU, VULKAN)}
# a runtime device -> the target whose libraries this process can load on it
DEVICE_TARGETS = {"cpu": "llvm", "cuda": "cuda", "metal": "metal", "vulkan": "vulkan"}


def get_target(name: str) -> TargetPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise RWKVRelaxError(f"unknown target '{name}'; valid targets: {', '.join(PRESETS)}") from None
