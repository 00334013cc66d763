"""checkpoint -> config -> nn.Module -> IRModule -> target build -> artifact."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import tvm
from tvm import relax

from .config import CHAT_CONFIG, read_config_json, read_preset
from .errors import ConfigError
from .loaders import detect, open_checkpoint
from .loaders.table import check_tensor_names, load_params
from .quantization import get_mode, quantize_model
from .registry import Architecture, get_architecture
from .targets import (ToolchainError, check_toolchain, cuda_runtime_loaded, get_target,
                      install_cuda_compile_callback, relax_pipeline, stub_libcuda_dir)


class ModelSource:
    """What ``--model`` named: a config (from preset or JSON) and, if given, the checkpoint."""

    def __init__(self, arch: Architecture, config, checkpoint=None, layout: str | None = None,
                 quantization: str | None = None, keep_embedding_head: bool = False):
        self.arch, self.config, self.checkpoint, self.layout = arch, config, checkpoint, layout
        # set when --model is an MLC-style model directory (gen_config's mlc-chat-config.json)
        self.quantization, self.keep_embedding_head = quantization, keep_embedding_head

    @property
    def name(self) -> str:
        return self.config.extra.get("name") or f"{self.arch.name}-{self.config.n_layer}x{self.config.n_embd}"


def resolve_model(model: str, overrides: dict[str, Any] | None = None) -> ModelSource:
    """``model`` is a preset name, a config JSON, or a checkpoint file / folder."""
    overrides = dict(overrides or {})
    path = Path(model)
    if not path.exists():
        if "/" in model or path.suffix in (".pth", ".bin", ".safetensors", ".json"):
            raise ConfigError(f"model path {model} does not exist")
        data = read_preset(model)  # an unknown name raises with the list of presets
        arch = get_architecture(data.get("model_type", ""))
        data.update(overrides)
        data.setdefault("name", model)
        return ModelSource(arch, arch.config_cls.from_dict(data))
    if path.is_dir() and (path / CHAT_CONFIG).is_file():
        data = json.loads((path / CHAT_CONFIG).read_text())
        arch = get_architecture(data.get("model_type", ""))
        cfg = dict(data.get("model_config", {}))
        cfg.update(overrides)
        cfg.setdefault("name", path.name)
        return ModelSource(arch, arch.config_cls.from_dict(cfg), quantization=data.get("quantization"),
                           keep_embedding_head=bool(data.get("keep_embedding_head", False)))
    if path.is_file() and path.suffix == ".json":
        data = read_config_json(path)
        arch = get_architecture(data.get("model_type", ""))
        data.update(overrides)
        return ModelSource(arch, arch.config_cls.from_dict(data))
    ckpt = open_checkpoint(path)
    arch_name, layout = detect(ckpt)
    arch = get_architecture(arch_name)
    config = arch.loader.infer_config(ckpt, layout, **overrides)
    # names and shapes only: a bad checkpoint fails here, before minutes of compilation
    check_tensor_names(ckpt, layout, arch.loader.source_shapes(config))
    config.extra.setdefault("name", path.stem)
    return ModelSource(arch, config, ckpt, layout)


def check_checkpoint_matches(source: ModelSource, arch_name: str) -> None:
    """The compiled library's architecture must be the checkpoint's."""
    if source.arch.name != arch_name:
        raise ConfigError(f"checkpoint {source.checkpoint.path} is {source.arch.name.upper()}, but the "
                          f"library was built for {arch_name.upper()}; build a library for it")


def float_config(source: ModelSource, quantization: str):
    """The source's config with the activation dtype of ``quantization``."""
    return source.config.replace(dtype=get_mode(quantization).act_dtype)


def make_model(source: ModelSource, quantization: str = "q0f32", keep_embedding_head: bool = False):
    """Return ``(nn.Module, WeightPlan)``: the model with ``quantization`` applied."""
    mode = get_mode(quantization)
    model = source.arch.model_cls(float_config(source, quantization))
    return quantize_model(model, mode, keep_embedding_head)


def export(source: ModelSource, quantization: str = "q0f32", keep_embedding_head: bool = False):
    """Return ``(IRModule, param specs {name: (shape, dtype)}, metadata)``."""
    model, _ = make_model(source, quantization, keep_embedding_head)
    cfg = model.cfg
    mod, named_params = model.export_tvm(spec=model.get_default_spec())
    params = {name: (tuple(int(s) for s in p.shape), p.dtype) for name, p in named_params}
    metadata = {
        "model_type": source.arch.name,
        "model_name": source.name,
        "quantization": quantization,
        "keep_embedding_head": keep_embedding_head,
        "model_config": cfg.to_dict(),
        "vocab_size": cfg.vocab_size,
        "num_hidden_layers": cfg.n_layer,
        "hidden_size": cfg.n_embd,
        "kv_state_kind": "rnn_state",
        "context_window_size": -1,
        "sliding_window_size": -1,
        "prefill_chunk_size": cfg.prefill_chunk_size,
        "max_batch_size": cfg.max_batch_size,
        "tensor_parallel_shards": 1,
        "pipeline_parallel_stages": 1,
        "state": model.state_spec().to_json(),
        "params": [{"name": n, "shape": list(s), "dtype": d} for n, (s, d) in params.items()],
    }
    mod = attach_metadata(mod, metadata)
    return mod, params, metadata


def attach_metadata(mod: tvm.IRModule, metadata: dict) -> tvm.IRModule:
    """Add ``_metadata() -> str`` (JSON), as MLC-LLM libraries carry."""
    bb = relax.BlockBuilder()
    with bb.function("_metadata", params=[]):
        bb.emit_func_output(tvm.ir.StringImm(json.dumps(metadata)))
    mod = mod.clone() if hasattr(mod, "clone") else mod
    mod["_metadata"] = bb.finalize()["_metadata"]
    return mod


def iter_params(source: ModelSource, quantization: str = "q0f32", keep_embedding_head: bool = False):
    """Yield ``(name, array)`` for every parameter of the (quantized) model, in model order,
    reading the checkpoint one tensor at a time."""
    model, plan = make_model(source, quantization, keep_embedding_head)
    cfg = float_config(source, quantization)
    float_model = source.arch.model_cls(cfg)
    # read everything as fp32 and cast once at the end: quantizing fp16-rounded weights would
    # round twice
    specs = {n: (tuple(int(s) for s in p.shape), "float32") for n, p in float_model.named_parameters()}
    final = {n: p.dtype for n, p in model.named_parameters()}
    loader = source.arch.loader
    for name, array in load_params(source.checkpoint, source.layout, loader.source_shapes(cfg),
                                   loader.param_table(cfg), specs):
        for out_name, out in plan.apply(name, array):
            yield out_name, out.astype(final[out_name], copy=False)


def compile_module(mod: tvm.IRModule, target: tvm.target.Target, system_lib_prefix: str | None = None):
    """Relax pipeline (scheduling) + TIR lowering + codegen for ``target``."""
    if system_lib_prefix is not None:
        mod = mod.with_attr("system_lib_prefix", system_lib_prefix)
    with target:
        if target.kind.name == "cuda":
            install_cuda_compile_callback()
        try:
            return relax.build(mod, target, relax_pipeline=relax_pipeline(target),
                               system_lib=True if system_lib_prefix is not None else None)  # None: TVM decides (wasm: yes)
        except Exception as err:  # TVM raises plain errors; only the missing codegen is ours
            if "target.build.vulkan" in str(err):
                raise ToolchainError(
                    "scheduling and lowering for vulkan succeeded, but this TVM wheel has no SPIR-V "
                    "codegen (target.build.vulkan is missing: built with USE_VULKAN=OFF); build TVM from "
                    "source with -DUSE_VULKAN=ON and the Vulkan SDK to write the .so") from None
            raise


def system_lib_prefix(source: ModelSource, quantization: str) -> str:
    """Symbol prefix for statically linked (system) libraries, so that several models can live in
    one app binary: ``<model>_<quantization>_`` with non-identifier characters replaced."""
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{source.name}_{quantization}_")


def atomic_write(path: Path, write) -> Path:
    """Call ``write(tmp_path)`` and rename into place, so a failure never leaves a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def default_output(source: ModelSource, quantization: str, target_name: str) -> Path:
    return Path("dist") / "libs" / f"{source.name}-{quantization}-{target_name}{get_target(target_name).extension}"


def build(model: str, target: str = "llvm", output: str | Path | None = None,
          quantization: str | None = None, arch: str | None = None,
          overrides: dict[str, Any] | None = None) -> Path:
    """Compile ``model`` for ``target`` and write the library. Returns its path.

    ``quantization`` defaults to the model directory's (gen_config), else q0f32."""
    preset = get_target(target)
    if quantization is not None:
        get_mode(quantization)  # an unknown mode fails before any work
    source = resolve_model(model, overrides)
    if source.quantization and quantization and quantization != source.quantization:
        raise ConfigError(f"{model} was generated for {source.quantization}, not {quantization}; pass "
                          f"--quantization {source.quantization} or re-run gen_config")
    quantization = quantization or source.quantization or "q0f32"
    out = Path(output) if output else default_output(source, quantization, target)
    tvm_target = preset.target(arch)
    check_toolchain(preset, str(out))
    if preset.name == "cuda" and not cuda_runtime_loaded():
        return _build_in_child(model, target, out, quantization, arch, overrides)
    mod, params, _ = export(source, quantization, source.keep_embedding_head)
    preset.check_params(params, quantization)
    prefix = system_lib_prefix(source, quantization) if preset.prefixed_system_lib else None
    ex = compile_module(mod, tvm_target, prefix)
    return atomic_write(out, lambda tmp: preset.export(ex, tmp, prefix))


def _build_in_child(model, target, out, quantization, arch, overrides) -> Path:
    """CUDA without a driver: TVM's CUDA runtime module (needed to embed nvcc output) loads only
    if libcuda.so.1 is present when TVM is imported, so build in a fresh process with a
    build-only stub preloaded."""
    env = dict(os.environ, LD_PRELOAD=str(stub_libcuda_dir() / "libcuda.so.1"))
    args = json.dumps({"model": model, "target": target, "output": str(out), "quantization": quantization,
                       "arch": arch, "overrides": overrides})
    code = ("import json, sys; from rwkv_relax.cli import run_child_build; "
            "sys.exit(run_child_build(json.loads(sys.argv[1])))")
    proc = subprocess.run([sys.executable, "-c", code, args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
        raise ToolchainError(lines[-1][len("error: "):] if lines else
                             f"the cuda build failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:300]}")
    return out
