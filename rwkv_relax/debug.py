"""Per-layer debugging: a debug build of the model that also returns every layer's sub-step
outputs, run beside the version's float64 numpy model (``versions/<v>/reference.py``) on the same
weights.

The production library exports only prefill/decode, so the per-layer values come from a second
build of the SAME nn.Module: each block's ``ln1``, ``att`` and ``ffn`` modules are instrumented
(their ``forward`` is wrapped on the instance, names and parameters unchanged) and one extra
function is exported,

    debug_prefill(input_embed (1, T, C), state) -> ((logits, ln1_0, att_0, ffn_0, ln1_1, ...), state)

which is ``prefill`` itself with the recorded tensors added to its outputs. The reference is the
version's numpy model on the library's own parameters, de-quantized, so any quantization mode and fp16
compare against exact float64 math: a difference is the compiled code's (fp16 rounding or
overflow, a wrong kernel), never the quantization's.

Used by ``tools/dump_intermediate.py``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import tvm
from tvm.relax.frontend import nn

from . import tensor_cache
from ._fs import atomic_write, tree_fingerprint
from .errors import RWKVRelaxError
from .pipeline import ModelSource, attach_metadata, export, float_config, make_model, resolve_model
from .quantization import get_mode
from .reference import dequantized_params
from .registry import get_spec
from .runtime.model import CompiledModel
from .targets import get_target

# The sub-steps of one layer, in execution order; the keys of NumpyRWKV's trace.
SUBSTEPS = ("ln1", "att", "ffn")
SUBSTEP_TITLES = {"ln1": "ln1 output", "att": "time-mix output", "ffn": "channel-mix output",
                  "logits": "logits"}
# max|ours - ref| <= tol * max|ref|, per tensor. fp32: float rounding only (the compiled model
# agrees with float64 to ~1e-6 relative). fp16: activations are rounded to fp16 (2**-11) at
# every projection and layer boundary, which moves a layer's outputs by a few 1e-3 of their scale.
DEFAULT_TOLERANCE = {"float32": 1e-4, "float16": 1e-2}
DEBUG_FUNCTION = "debug_prefill"


# ---- the debug build --------------------------------------------------------------------------
class _Recorder:
    """Collects the outputs of instrumented sub-modules while ``debug_prefill`` is traced (and
    only then: prefill/decode/embed are traced without recording)."""

    def __init__(self):
        self.recording: list | None = None

    def wrap(self, module: nn.Module, name: str, pick=lambda out: out) -> None:
        inner = module.forward

        def forward(*args, **kwargs):
            out = inner(*args, **kwargs)
            if self.recording is not None:
                self.recording.append((name, pick(out)))
            return out
        # an instance attribute: the class's forward, parameters and names stay as they are
        module.forward = forward


def output_names(n_layer: int) -> list[str]:
    """Names of ``debug_prefill``'s outputs, in order: ``logits`` then ``<layer>.<sub-step>``."""
    return ["logits"] + [f"{i}.{step}" for i in range(n_layer) for step in SUBSTEPS]


def instrument(model) -> _Recorder:
    """Give ``model`` a ``debug_prefill`` method returning prefill's logits plus every layer's
    ln1 / time-mix / channel-mix outputs."""
    recorder = _Recorder()
    for i, block in enumerate(model.blocks):
        recorder.wrap(block.ln1, f"{i}.ln1")
        recorder.wrap(block.att, f"{i}.att")
        recorder.wrap(block.ffn, f"{i}.ffn")

    def debug_prefill(input_embed, state):
        recorder.recording = []
        try:
            logits, state = model.prefill(input_embed, state)
            recorded = dict(recorder.recording)
        finally:
            recorder.recording = None
        names = output_names(len(model.blocks))[1:]
        if sorted(recorded) != sorted(names):
            raise AssertionError(f"recorded {sorted(recorded)}, expected {names}")
        return (logits, *[recorded[n] for n in names]), state
    model.debug_prefill = debug_prefill
    return recorder


def export_debug(source: ModelSource, quantization: str = "q0f32", keep_embedding_head: bool = False):
    """The debug IRModule (``embed``, ``create_rnn_state``, ``debug_prefill``, ``_metadata``) and
    its metadata: the production library's, plus ``debug_outputs``."""
    _, metadata = export(source, quantization, keep_embedding_head)
    model = make_model(source, quantization, keep_embedding_head)
    instrument(model)
    spec = model.get_default_spec()
    spec = {"embed": spec["embed"], "create_rnn_state": spec["create_rnn_state"],
            DEBUG_FUNCTION: dict(spec["prefill"])}
    mod, named = model.export_tvm(spec=spec)
    # the debug build takes the packed parameters in the production library's order
    assert [n for n, _ in named] == [p["name"] for p in metadata["params"]], \
        "debug model parameters differ from the library's"
    metadata = dict(metadata, debug_outputs=output_names(model.cfg.n_layer))
    return attach_metadata(mod, metadata), metadata


def build_debug_library(source: ModelSource, quantization: str, output: str | Path,
                        keep_embedding_head: bool = False) -> Path:
    """Compile the debug module for this machine's CPU (llvm) and write it to ``output``."""
    get_mode(quantization)
    preset = get_target("llvm")
    mod, _ = export_debug(source, quantization, keep_embedding_head)
    ex = preset.compile(mod, preset.target())
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    preset.export(ex, str(output), None)
    return output


class DebugModel(CompiledModel):
    """A debug library (:func:`build_debug_library`) with its weights."""

    def __init__(self, lib_path, weights, device: str = "cpu"):
        super().__init__(lib_path, weights, device, max_sequences=2, max_history=1)
        if "debug_outputs" not in self.metadata:
            raise RWKVRelaxError(f"{lib_path} is not a debug build (no {DEBUG_FUNCTION}); build one "
                                 "with rwkv_relax.debug.build_debug_library")
        self.output_names = self.metadata["debug_outputs"]

    def trace(self, tokens: Sequence[int]) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
        """Prefill ``tokens`` from a fresh state in ONE call (no chunking). Returns the last
        token's logits (V,) and, per layer, ``{"ln1", "att", "ffn"}`` arrays (T, C)."""
        ids = self._tokens(tokens)
        state = self.new_state()
        emb = tvm.runtime.tensor(self._embed(ids).numpy()[None], self.device)  # (1, T, C)
        outs = self._run(DEBUG_FUNCTION, [state.seq_id], [int(ids.size)], emb)
        values = dict(zip(self.output_names, (o.numpy() for o in outs)))
        trace = [{step: values[f"{i}.{step}"] for step in SUBSTEPS} for i in range(self.n_layer)]
        return values["logits"].reshape(-1), trace


def library_params(model: CompiledModel) -> dict[str, np.ndarray]:
    """The loaded parameters, as the library takes them (quantized, in its dtypes)."""
    return {p["name"]: t.numpy() for p, t in zip(model.metadata["params"], model.params)}


def reference_trace(model: CompiledModel, tokens: Sequence[int],
                    params: dict[str, np.ndarray] | None = None):
    """The version's numpy model (float64) on the library's de-quantized parameters (``params``:
    another set of library parameters, e.g. a clean checkpoint's). Returns (logits (V,), per-layer
    trace)."""
    md = model.metadata
    if params is None:
        params = library_params(model)
    mode = get_mode(md["quantization"])
    ref = get_spec(md["model_type"]).reference(
        md["model_config"], dequantized_params(params, mode.weight_bits, mode.group_size))
    logits, _, trace = ref.forward(np.asarray(tokens, dtype=np.int64))
    return logits, trace


# ---- comparison -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StepDiff:
    """One compared tensor: layer (None for the logits), sub-step, and how far apart they are."""

    layer: int | None
    step: str
    max_abs: float  # max |ours - ref| over finite entries of both (nan if none)
    scale: float  # max |ref|
    ours_nonfinite: int
    ref_nonfinite: int
    tol: float

    @property
    def rel(self) -> float:
        return self.max_abs / self.scale if self.scale > 0 else self.max_abs

    @property
    def ok(self) -> bool:
        # a NaN/Inf in ours where the reference is finite fails whatever the finite entries do
        return self.ours_nonfinite <= self.ref_nonfinite and self.rel <= self.tol

    @property
    def title(self) -> str:
        return "logits" if self.layer is None else f"layer {self.layer}, {SUBSTEP_TITLES[self.step]}"


def diff(layer: int | None, step: str, ours: np.ndarray, ref: np.ndarray, tol: float) -> StepDiff:
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        raise AssertionError(f"layer {layer} {step}: ours {ours.shape}, reference {ref.shape}")
    both = np.isfinite(ours) & np.isfinite(ref)
    d = np.abs(ours - ref)[both]
    return StepDiff(layer, step, float(d.max()) if d.size else float("nan"),
                    float(np.abs(ref[np.isfinite(ref)]).max(initial=0.0)),
                    int((~np.isfinite(ours)).sum()), int((~np.isfinite(ref)).sum()), tol)


def compare(ours: tuple, ref: tuple, tol: float, stop: bool = True) -> list[StepDiff]:
    """Walk layer by layer, sub-step by sub-step; stop after the first step past ``tol`` (unless
    ``stop`` is False). The logits come last. ``ours`` / ``ref``: (logits, trace) pairs."""
    (ours_logits, ours_trace), (ref_logits, ref_trace) = ours, ref
    rows = []
    for i, (o, r) in enumerate(zip(ours_trace, ref_trace)):
        for step in SUBSTEPS:
            rows.append(diff(i, step, o[step], r[step], tol))
            if stop and not rows[-1].ok:
                return rows
    rows.append(diff(None, "logits", ours_logits, ref_logits, tol))
    return rows


def first_failure(rows: Sequence[StepDiff]) -> StepDiff | None:
    return next((r for r in rows if not r.ok), None)


def default_tolerance(quantization: str) -> float:
    return DEFAULT_TOLERANCE[get_mode(quantization).act_dtype]


def resolve_weights(path: str | Path, overrides: dict | None = None) -> ModelSource:
    """``path`` is a checkpoint or a params directory (convert_weight's tensor cache). For a params
    directory the source carries its quantization."""
    if tensor_cache.is_tensor_cache(path):
        md = tensor_cache.read_index(path)["metadata"]
        spec = get_spec(md.get("model_type", ""))
        cfg = dict(md["model_config"], **(overrides or {}))
        cfg.setdefault("name", Path(path).name)
        return ModelSource(spec, spec.config_cls.from_dict(cfg), quantization=md.get("quantization"),
                           keep_embedding_head=bool(md.get("keep_embedding_head", False)))
    source = resolve_model(str(path), overrides)
    if source.weights is None:
        raise RWKVRelaxError(f"{path} holds no weights; pass a checkpoint or a params directory "
                             "(python -m rwkv_relax.convert_weight)")
    return source


def _code_fingerprint() -> str:
    """What a debug build depends on besides the config: TVM and the model and kernel sources."""
    root = Path(__file__).parent
    return tvm.__version__ + tree_fingerprint(root, root.parent / "tir_kernels")


def debug_library_for(source: ModelSource, quantization: str, cache_dir: str | Path | None = None,
                      keep_embedding_head: bool = False) -> Path:
    """A debug library for ``source``'s shapes, built once per (config, quantization, code) in
    ``cache_dir`` (a fresh temporary folder when None). Weights are not part of the build."""
    cfg = float_config(source, quantization).to_dict()
    cfg.pop("name", None)
    key = json.dumps([source.spec.name, cfg, quantization, keep_embedding_head, _code_fingerprint()],
                     sort_keys=True)
    folder = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="rwkv_relax_debug_"))
    out = folder / f"debug-{source.spec.name}-{quantization}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.so"
    if not out.is_file():
        atomic_write(out, lambda tmp: build_debug_library(source, quantization, tmp, keep_embedding_head))
    return out
