"""A target preset: a user-facing name -> a TVM target (with its device limits), a compile
pipeline, an artifact format and the function that writes it, plus the target's toolchain checks
(MLC-LLM's ``PRESET``). Nothing here imports TVM until a preset is used."""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

from ..errors import ConfigError, ToolchainError


def export_plain(ex, path: str, prefix: str | None) -> None:
    ex.export_library(path)


def export_tar(ex, path: str, prefix: str | None) -> None:
    """A tar of the target's object files (host code + packed device code) for the platform's
    own toolchain (Xcode, the NDK) to link, as MLC-LLM ships them."""
    from tvm.support import tar
    ex.export_library(path, fcompile=tar.tar)


def gpu_pipeline(target):
    from .gpu import gpu_pipeline as pipeline
    return pipeline(target)


@dataclasses.dataclass(frozen=True)
class TargetPreset:
    name: str
    make_target: Callable[[str | None], dict]  # chip override -> TVM target dict
    extension: str
    export: Callable  # (executable, output path, system-lib prefix) -> None
    # a static system library whose symbols carry a per-model prefix, so that several models can
    # link into one app (iphone, android). wasm is a system library too, but unprefixed: one model
    # per .wasm, found by tvmjs's createVirtualMachine as web-llm expects.
    prefixed_system_lib: bool
    description: str
    pipeline: Callable = gpu_pipeline  # TVM target -> relax pass
    chip_help: str = ""
    # largest single weight the target can bind (None: no limit below device memory)
    max_tensor_bytes: int | None = None
    toolchain: Callable[[str], None] | None = None  # output path -> raises ToolchainError
    # a build that must run in a fresh process (cuda without a driver): (None: never)
    in_child: Callable[[], bool] | None = None
    run_child: Callable[[dict], object] | None = None
    prepare: Callable[[], None] | None = None  # called before compiling (e.g. nvcc's callback)
    # the message when TVM lacks this target's codegen
    missing_codegen: tuple[str, str] | None = None  # (TVM's function name, our message)
    # the library carries ``sample_logits`` (``tir_kernels/sampling.py``): tokens are drawn where
    # the logits are, without copying them to numpy (a form exists for the CPU only)
    sampler: bool = False

    def target(self, chip: str | None = None):
        import tvm
        return tvm.target.Target(self.make_target(chip))

    @property
    def gpu(self) -> bool:
        return self.name != "llvm"

    def check_toolchain(self, output: str) -> None:
        """Fail early, in one line, when a tool the target needs is missing."""
        if self.toolchain is not None:
            self.toolchain(output)

    def needs_child_build(self) -> bool:
        return self.in_child is not None and self.in_child()

    def child_build(self, kwargs: dict):
        return self.run_child(kwargs)

    def check_params(self, params: list[dict], quantization: str) -> None:
        """Refuse a (model, mode) whose largest weight this target cannot bind."""
        if self.max_tensor_bytes is None or not params:
            return
        import numpy as np
        sizes = {p["name"]: math.prod(p["shape"]) * np.dtype(p["dtype"]).itemsize for p in params}
        name = max(sizes, key=sizes.get)
        if sizes[name] > self.max_tensor_bytes:
            raise ConfigError(
                f"{self.name} cannot run {quantization} for this model: {name} is "
                f"{sizes[name] / 2**20:.0f} MiB, over the {self.max_tensor_bytes / 2**20:.0f} MiB a "
                f"{self.name} shader can bind; " + (
                    "quantize the embedding and head too (no --keep-embedding-head)"
                    if quantization.startswith("q4") else "use a 4-bit mode (q4f16_1 or q4f32_1)"))

    def compile(self, mod, target, system_lib_prefix: str | None = None, **pipeline_options):
        """Relax pipeline (scheduling) + TIR lowering + codegen. ``pipeline_options`` go to the
        target's pipeline (llvm: ``int8_activations``)."""
        from tvm import relax
        if system_lib_prefix is not None:
            mod = mod.with_attr("system_lib_prefix", system_lib_prefix)
        with target:
            if self.prepare is not None:
                self.prepare()
            try:
                return relax.build(mod, target, relax_pipeline=self.pipeline(target, **pipeline_options),
                                   # None: TVM decides (wasm: a system lib)
                                   system_lib=True if system_lib_prefix is not None else None)
            except Exception as err:  # TVM raises plain errors; only the missing codegen is ours
                if self.missing_codegen and self.missing_codegen[0] in str(err):
                    raise ToolchainError(self.missing_codegen[1]) from None
                raise
