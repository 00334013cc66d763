"""Writing MLC-style model directories: ``mlc-chat-config.json`` with the tokenizer files
(:func:`gen_config`) and the converted weights as a tensor cache (:func:`convert`). The runtime
reads them (``runtime/model_dir.py``)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from . import tensor_cache
from ._fs import atomic_write, publish_dir, staging_dir
from .config import CHAT_CONFIG
from .errors import RWKVRelaxError
from .loaders import time_state
from .pipeline import float_config, make_model, param_list, resolve_model
from .quantization import get_mode
from .runtime.conversation import TEMPLATES
from .weights import library_params

TOKENIZER_NAMES = ("rwkv_vocab_v20230424.txt", "tokenizer.json", "20B_tokenizer.json")
# ChatRWKV's chat defaults (v2/chat.py): GEN_TEMP 1.0, GEN_TOP_P 0.3, presence 0, frequency 1,
# penalty decay 0.996
SAMPLING_DEFAULTS = {"temperature": 1.0, "top_p": 0.3, "top_k": 0, "presence_penalty": 0.0,
                     "frequency_penalty": 1.0, "penalty_decay": 0.996, "repetition_penalty": 1.0}


def convert(checkpoint: str, quantization: str, output: str | Path, keep_embedding_head: bool = False,
            overrides: dict | None = None, shard_cap_mb: int = 32) -> Path:
    """Stream ``checkpoint`` tensor by tensor through the name table and the quantization into a
    tensor cache in ``output`` (written beside it and renamed at the end: no half-written output)."""
    get_mode(quantization)
    source = resolve_model(checkpoint, overrides)
    if source.weights is None:
        raise RWKVRelaxError(f"{checkpoint} is not a checkpoint; convert_weight needs weights")
    params = param_list(make_model(source, quantization, keep_embedding_head))
    out = Path(output)
    if out.exists() and any(out.iterdir()) and not (tensor_cache.is_tensor_cache(out)
                                                    or (out / CHAT_CONFIG).is_file()):
        raise RWKVRelaxError(f"output {out} exists and is not a params directory; choose another -o")
    cfg = float_config(source, quantization)
    metadata = {"model_type": source.spec.name, "quantization": quantization,
                "keep_embedding_head": keep_embedding_head, "model_config": cfg.to_dict()}
    with staging_dir(out) as tmp:
        tensor_cache.write(library_params(source.weights, cfg, params, quantization), tmp, len(params),
                           metadata, shard_cap_mb)
        tuned = source.weights.initial_state()
        if tuned is not None:  # a state-tuned checkpoint: keep its tuning, in the file's own layout
            from safetensors.numpy import save_file
            save_file(time_state.to_file_layout(tuned, cfg.n_layer), str(tmp / time_state.CACHE_FILE))
        # replace an older conversion, keeping other files (config, tokenizer)
        publish_dir(tmp, out, replace=("params_shard_*.bin", time_state.CACHE_FILE))
    return out


def find_tokenizer(model: str, explicit: str | None) -> list[Path]:
    """Tokenizer files: the given path (file or folder), else those next to the checkpoint."""
    if explicit:
        p = Path(explicit)
        if p.is_file():
            return [p]
        if p.is_dir():
            found = [p / n for n in TOKENIZER_NAMES if (p / n).is_file()]
            if found:
                return found
        raise RWKVRelaxError(f"tokenizer {explicit} not found (want a file, or a folder holding one of "
                             f"{', '.join(TOKENIZER_NAMES)})")
    folder = Path(model) if Path(model).is_dir() else Path(model).parent
    return [folder / n for n in TOKENIZER_NAMES if (folder / n).is_file()] if Path(model).exists() else []


def gen_config(model: str, quantization: str, conv_template: str, output: str | Path,
               tokenizer: str | None = None, overrides: dict | None = None,
               keep_embedding_head: bool = False) -> Path:
    """Write ``mlc-chat-config.json`` for ``model`` into ``output`` and copy the tokenizer files."""
    get_mode(quantization)
    if conv_template not in TEMPLATES:
        raise RWKVRelaxError(f"unknown conv template '{conv_template}'; valid: {', '.join(TEMPLATES)}")
    source = resolve_model(model, overrides)
    cfg = float_config(source, quantization)
    tokenizer_files = find_tokenizer(model, tokenizer)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "version": "0.1.0",
        "model_type": source.spec.name,
        "quantization": quantization,
        "keep_embedding_head": keep_embedding_head,
        "model_config": cfg.to_dict(),
        "vocab_size": cfg.vocab_size,
        "context_window_size": -1,  # an RNN: no attention window
        "sliding_window_size": -1,
        "attention_sink_size": -1,
        "prefill_chunk_size": cfg.prefill_chunk_size,
        "max_batch_size": cfg.max_batch_size,
        "tensor_parallel_shards": 1,
        "conv_template": conv_template,
        **SAMPLING_DEFAULTS,
        "tokenizer_files": [p.name for p in tokenizer_files],
    }
    for src in tokenizer_files:
        if src.resolve() != (out / src.name).resolve():
            atomic_write(out / src.name, lambda tmp, src=src: shutil.copyfile(src, tmp))
    atomic_write(out / CHAT_CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    return out / CHAT_CONFIG
