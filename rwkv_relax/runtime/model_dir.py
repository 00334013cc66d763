"""A model directory, as ``gen_config`` and ``convert_weight`` write it (MLC-LLM's layout):
``mlc-chat-config.json`` (model config, conversation template, sampling defaults, tokenizer file
names), the tensor cache and the tokenizer files."""
from __future__ import annotations

import json
from pathlib import Path

from ..config import CHAT_CONFIG, is_finite_number, is_integer
from ..errors import RWKVRelaxError
from .tokenizers import load_tokenizer

# the devices a library can run on in this process
DEVICES = ("cpu", "cuda", "metal", "vulkan", "opencl")


class EngineError(RWKVRelaxError):
    """A model directory that cannot be used, or a request the engine cannot serve."""


def read_chat_config(model_dir: str | Path) -> dict:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise EngineError(f"model directory {model_dir} does not exist (make one with "
                          "python -m rwkv_relax.gen_config and convert_weight)")
    path = model_dir / CHAT_CONFIG
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise EngineError(f"{model_dir} has no {CHAT_CONFIG}; write it with "
                          "python -m rwkv_relax.gen_config") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EngineError(f"{path} is not valid JSON ({err}); re-run gen_config") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise EngineError(f"{path} has no model_type; re-run gen_config")
    for field, (check, want) in _CHAT_FIELDS.items():
        if field in config and not check(config[field]):
            raise EngineError(f"{path}: {field} must be {want}, got {config[field]!r}; fix it or re-run gen_config")
    return config


# the fields of mlc-chat-config.json the runtime reads, with their JSON types
_CHAT_FIELDS = {
    "model_type": (lambda x: isinstance(x, str), "a string"),
    "conv_template": (lambda x: isinstance(x, str), "a string"),
    "tokenizer_files": (lambda x: isinstance(x, list) and all(isinstance(n, str) for n in x), "a list of file names"),
    **{f: (is_finite_number, "a finite number") for f in ("temperature", "top_p", "presence_penalty",
                                                          "frequency_penalty", "penalty_decay", "repetition_penalty")},
    "top_k": (is_integer, "an integer"),
}


def load_dir_tokenizer(model_dir: Path, config: dict):
    """The first tokenizer file the config names that the directory holds."""
    names = [n for n in config.get("tokenizer_files", []) if (model_dir / n).is_file()]
    if not names:
        raise EngineError(f"{model_dir} has no tokenizer (tokenizer_files in {CHAT_CONFIG}: "
                          f"{config.get('tokenizer_files', [])}); re-run gen_config with --tokenizer")
    return load_tokenizer(model_dir / names[0])
