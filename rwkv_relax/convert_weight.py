"""``python -m rwkv_relax.convert_weight <checkpoint> --quantization q4f16_1 -o <dir>``

Streams the checkpoint tensor by tensor through the name table and the quantization's weight
plan into a tensor cache (``tensor-cache.json`` + ``params_shard_*.bin``). Writes into a
temporary directory beside ``-o`` and renames it at the end: no half-written output.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .cli import add_config_flags, config_overrides, one_line_errors
from .config import CHAT_CONFIG


def convert(checkpoint: str, quantization: str, output: str | Path, keep_embedding_head: bool = False,
            overrides: dict | None = None, shard_cap_mb: int = 32) -> Path:
    from . import tensor_cache
    from .errors import RWKVRelaxError
    from .pipeline import float_config, iter_params, make_model, resolve_model
    from .quantization import get_mode
    get_mode(quantization)
    source = resolve_model(checkpoint, overrides)
    if source.checkpoint is None:
        raise RWKVRelaxError(f"{checkpoint} is not a checkpoint; convert_weight needs weights")
    model, _ = make_model(source, quantization, keep_embedding_head)
    n_params = len(list(model.named_parameters()))
    out = Path(output)
    if out.exists() and any(out.iterdir()) and not (tensor_cache.is_tensor_cache(out)
                                                    or (out / CHAT_CONFIG).is_file()):
        raise RWKVRelaxError(f"output {out} exists and is not a params directory; choose another -o")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        metadata = {"model_type": source.arch.name, "quantization": quantization,
                    "keep_embedding_head": keep_embedding_head,
                    "model_config": float_config(source, quantization).to_dict()}
        tensor_cache.write(iter_params(source, quantization, keep_embedding_head), tmp, n_params,
                           metadata, shard_cap_mb)
        if out.exists():  # replace an older conversion, keeping other files (config, tokenizer)
            for f in out.glob("params_shard_*.bin"):
                f.unlink()
            for f in tmp.iterdir():
                f.replace(out / f.name)
            tmp.rmdir()
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


@one_line_errors
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rwkv_relax.convert_weight", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="BlinkDL .pth, or a Hugging Face folder / file")
    p.add_argument("--quantization", required=True, help="q0f32, q0f16, q4f16_1, q4f32_1, q8f16_1")
    p.add_argument("-o", "--output", required=True, help="params directory to write")
    p.add_argument("--keep-embedding-head", action="store_true",
                   help="keep embedding and head in the activation dtype")
    add_config_flags(p)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    out = convert(args.checkpoint, args.quantization, args.output, args.keep_embedding_head,
                  config_overrides(args))
    size = sum(f.stat().st_size for f in out.glob("params_shard_*.bin"))
    print(f"wrote {out} ({size / 2**20:.1f} MiB of params) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
