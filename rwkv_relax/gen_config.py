"""``python -m rwkv_relax.gen_config <checkpoint | preset> --quantization q4f16_1
--conv-template rwkv-world -o <dir>``: writes ``mlc-chat-config.json`` and copies the tokenizer."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from .cli import add_config_flags, config_overrides, one_line_errors
from .config import CHAT_CONFIG
from .conversation import TEMPLATES

TOKENIZER_NAMES = ("rwkv_vocab_v20230424.txt", "tokenizer.json", "20B_tokenizer.json")
# ChatRWKV's chat defaults (v2/chat.py): GEN_TEMP 1.0, GEN_TOP_P 0.3, presence 0, frequency 1,
# penalty decay 0.996
SAMPLING_DEFAULTS = {"temperature": 1.0, "top_p": 0.3, "top_k": 0, "presence_penalty": 0.0,
                     "frequency_penalty": 1.0, "penalty_decay": 0.996, "repetition_penalty": 1.0}


def find_tokenizer(model: str, explicit: str | None) -> list[Path]:
    """Tokenizer files: the given path (file or folder), else those next to the checkpoint."""
    from .errors import RWKVRelaxError
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
    from .errors import RWKVRelaxError
    from .pipeline import atomic_write, float_config, resolve_model
    from .quantization import get_mode
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
        "model_type": source.arch.name,
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


@one_line_errors
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rwkv_relax.gen_config", description=__doc__)
    p.add_argument("model", help="checkpoint file/folder, preset name, or config JSON")
    p.add_argument("--quantization", required=True)
    p.add_argument("--conv-template", default="rwkv-world", help=f"one of {', '.join(TEMPLATES)}")
    p.add_argument("--tokenizer", default=None, help="tokenizer file or folder (default: beside the checkpoint)")
    p.add_argument("--keep-embedding-head", action="store_true")
    add_config_flags(p)
    p.add_argument("-o", "--output", required=True, help="model directory")
    args = p.parse_args(argv)
    path = gen_config(args.model, args.quantization, args.conv_template, args.output, args.tokenizer,
                      config_overrides(args), args.keep_embedding_head)
    cfg = json.loads(path.read_text())
    if not cfg["tokenizer_files"]:
        print("warning: no tokenizer found; pass --tokenizer to copy one", file=sys.stderr)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
