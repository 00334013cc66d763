"""checkpoint -> config -> nn.Module -> quantize -> IRModule -> target build -> artifact."""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

import tvm
from tvm import relax

from ._fs import atomic_write
from .config import CHAT_CONFIG, read_config_json, read_preset
from .errors import ConfigError, RWKVRelaxError
from .quantization import get_mode, quantize_model
from .registry import ModelSpec, get_spec
from .targets import TargetPreset, get_target
from .weights import Weights, open_weights

log = logging.getLogger("rwkv_relax")


@dataclasses.dataclass
class ModelSource:
    """What ``--model`` named: a version's config (from a preset, JSON or a checkpoint's shapes)
    and, for a checkpoint, its weights. ``quantization`` / ``keep_embedding_head`` are set when
    ``--model`` is an MLC-style model directory (gen_config's mlc-chat-config.json)."""

    spec: ModelSpec
    config: Any
    weights: Weights | None = None
    quantization: str | None = None
    keep_embedding_head: bool = False

    @property
    def name(self) -> str:
        return self.config.extra.get("name") or f"{self.spec.name}-{self.config.n_layer}x{self.config.n_embd}"


def _from_dict(data: dict, overrides: dict, name: str | None = None, **kwargs) -> ModelSource:
    spec = get_spec(data.get("model_type", ""))
    data = {**data, **overrides}
    if name:
        data.setdefault("name", name)
    return ModelSource(spec, spec.config_cls.from_dict(data), **kwargs)


def resolve_model(model: str, overrides: dict[str, Any] | None = None) -> ModelSource:
    """``model`` is a preset name, a config JSON, a model directory, or a checkpoint file / folder."""
    overrides = dict(overrides or {})
    path = Path(model)
    if not path.exists():
        if "/" in model or path.suffix in (".pth", ".bin", ".safetensors", ".json"):
            raise ConfigError(f"model path {model} does not exist")
        return _from_dict(read_preset(model), overrides, name=model)  # unknown names list the presets
    if path.is_dir() and (path / CHAT_CONFIG).is_file():
        data = json.loads((path / CHAT_CONFIG).read_text())
        cfg = {**data.get("model_config", {}), "model_type": data.get("model_type", "")}
        return _from_dict(cfg, overrides, name=path.name, quantization=data.get("quantization"),
                          keep_embedding_head=bool(data.get("keep_embedding_head", False)))
    if path.is_file() and path.suffix == ".json":
        return _from_dict(read_config_json(path), overrides)
    weights = open_weights(path, overrides)
    weights.config.extra.setdefault("name", path.stem)
    return ModelSource(weights.spec, weights.config, weights)


def float_config(source: ModelSource, quantization: str):
    """The source's config with the activation dtype of ``quantization``."""
    return source.config.replace(dtype=get_mode(quantization).act_dtype)


def make_model(source: ModelSource, quantization: str = "q0f32", keep_embedding_head: bool = False):
    """The nn.Module with ``quantization`` applied."""
    model = source.spec.model_cls(float_config(source, quantization))
    return quantize_model(model, get_mode(quantization), keep_embedding_head)


def param_list(model) -> list[dict]:
    """``[{"name", "shape", "dtype"}]`` of a model, in the packed order the library takes them."""
    return [{"name": n, "shape": [int(s) for s in p.shape], "dtype": p.dtype} for n, p in model.named_parameters()]


def export(source: ModelSource, quantization: str = "q0f32", keep_embedding_head: bool = False):
    """Return ``(IRModule, metadata)``; ``metadata["params"]`` is the parameter list."""
    model = make_model(source, quantization, keep_embedding_head)
    cfg = model.cfg
    mod, _ = model.export_tvm(spec=model.get_default_spec())
    metadata = {
        "model_type": source.spec.name,
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
        "params": param_list(model),
    }
    return attach_metadata(mod, metadata), metadata


def attach_metadata(mod: tvm.IRModule, metadata: dict) -> tvm.IRModule:
    """Add ``_metadata() -> str`` (JSON), as MLC-LLM libraries carry."""
    bb = relax.BlockBuilder()
    with bb.function("_metadata", params=[]):
        bb.emit_func_output(tvm.ir.StringImm(json.dumps(metadata)))
    mod = mod.clone() if hasattr(mod, "clone") else mod
    mod["_metadata"] = bb.finalize()["_metadata"]
    return mod


def system_lib_prefix(source: ModelSource, quantization: str) -> str:
    """Symbol prefix for statically linked (system) libraries, so that several models can live in
    one app binary: ``<model>_<quantization>_`` with non-identifier characters replaced."""
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{source.name}_{quantization}_")


def default_output(source: ModelSource, quantization: str, target: TargetPreset) -> Path:
    return Path("dist") / "libs" / f"{source.name}-{quantization}-{target.name}{target.extension}"


def build(model: str, target: str = "llvm", output: str | Path | None = None,
          quantization: str | None = None, chip: str | None = None,
          overrides: dict[str, Any] | None = None, cuda_graph: bool = False,
          cpu_int8_activations: bool = False) -> Path:
    """Compile ``model`` for ``target`` and write the library. Returns its path.

    ``quantization`` defaults to the model directory's (gen_config), else q0f32; ``chip`` is the
    target's chip (llvm -mcpu, cuda sm_XX, ...); ``cuda_graph`` (cuda only): decode's kernels are
    captured in CUDA graphs (``targets/cuda.py``), recorded as ``cuda_graph`` in ``_metadata``;
    ``cpu_int8_activations`` (llvm, quantized modes): the decode GEMVs quantize their activations
    to int8 per group, as ggml's Q8_0 dots do (faster, not exact; ``tir_kernels/quant_matmul``),
    recorded as ``cpu_int8_activations`` in ``_metadata``."""
    preset = get_target(target)
    if cuda_graph and preset.name != "cuda":
        raise ConfigError(f"--cuda-graph is a cuda option; drop it or build with --target cuda, not {target}")
    if cpu_int8_activations and preset.name != "llvm":
        raise ConfigError(f"--cpu-int8-activations is an llvm option; drop it or build with --target llvm, "
                          f"not {target}")
    if quantization is not None:
        get_mode(quantization)  # an unknown mode fails before any work
    source = resolve_model(model, overrides)
    if source.quantization and quantization and quantization != source.quantization:
        raise ConfigError(f"{model} was generated for {source.quantization}, not {quantization}; pass "
                          f"--quantization {source.quantization} or re-run gen_config")
    quantization = quantization or source.quantization or "q0f32"
    if cpu_int8_activations and not get_mode(quantization).quantized:
        raise ConfigError(f"--cpu-int8-activations quantizes the activations of quantized GEMVs; {quantization} "
                          "has none: drop the flag or use q4f16_1, q4f32_1 or q8f16_1")
    out = Path(output) if output else default_output(source, quantization, preset)
    tvm_target = preset.target(chip)
    if cpu_int8_activations:
        from .targets.cpu import check_int8_activations
        check_int8_activations(tvm_target)
    preset.check_toolchain(str(out))
    if preset.needs_child_build():
        return preset.child_build(dict(model=model, target=target, output=str(out), quantization=quantization,
                                       chip=chip, overrides=overrides, cuda_graph=cuda_graph))
    t0 = time.perf_counter()
    mod, metadata = export(source, quantization, source.keep_embedding_head)
    preset.check_params(metadata["params"], quantization)
    if preset.sampler:
        from .targets.sampling import attach_sampler
        mod = attach_metadata(attach_sampler(mod, metadata), metadata)
    log.info("compiling %s (%s) for %s", source.name, quantization, preset.name)
    prefix = system_lib_prefix(source, quantization) if preset.prefixed_system_lib else None
    if cpu_int8_activations:
        metadata["cpu_int8_activations"] = True
        ex = preset.compile(attach_metadata(mod, metadata), tvm_target, prefix, int8_activations=True)
    elif cuda_graph:
        from .targets.cuda import cuda_graph_context
        metadata["cuda_graph"] = True
        with cuda_graph_context():
            ex = preset.compile(attach_metadata(mod, metadata), tvm_target, prefix)
    else:
        ex = preset.compile(mod, tvm_target, prefix)
    log.info("compiled in %.0f s; writing %s", time.perf_counter() - t0, out)
    return atomic_write(out, lambda tmp: preset.export(ex, tmp, prefix))


def _child_build(argv: list[str]) -> int:
    """``python -m rwkv_relax.pipeline <build kwargs as JSON>``: the fresh process a target's
    child build (cuda without a driver, ``targets/cuda.py``) runs."""
    from .targets.cuda import cuda_runtime_loaded
    if not cuda_runtime_loaded():
        print("error: TVM's CUDA runtime did not load even with the build-only libcuda stub", file=sys.stderr)
        return 2
    try:
        build(**json.loads(argv[0]))
    except RWKVRelaxError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_child_build(sys.argv[1:]))
