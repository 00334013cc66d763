"""rwkv.cpp as a CPU peer, measured beside our build (tools/bench.py --rwkv-cpp DIR).

Nothing of rwkv.cpp is in this repo or in CI: you build rwkv.cpp (github.com/RWKV/rwkv.cpp with its
pinned ggml submodule, ``cmake -DRWKV_STANDALONE=ON -DGGML_NATIVE=ON``) outside the repo and point
the tools at its folder DIR. Its Python wrapper (``DIR/src/python``: ``rwkv_cpp``, the converter
``convert_pytorch_to_ggml.py``) goes on PYTHONPATH of the subprocesses this module starts, and the
wrapper finds ``librwkv.so`` itself (``DIR/build/`` and the usual places). This module

* converts a BlinkDL checkpoint (RWKV v4, v5, v6, v7: what rwkv.cpp's converter detects) with
  rwkv.cpp's own converter to FP32 / FP16 files (RWKV-7 without layer 0's unused v0/v1/v2, on
  which rwkv.cpp's loader aborts) and quantizes Q8_0 / Q4_0 (any of rwkv.cpp's
  quantized formats) from the FP16 file, as rwkv.cpp's README does (``convert``, run in a
  subprocess of this interpreter, which has torch);
* runs, with a plain interpreter (``python3``: the wrapper is ctypes only; this file does not even
  need numpy), a timing server (this same file run as a script) that answers one request per
  round, so that rounds interleave with ours. Each model file is loaded once; each request times
  prefill: the prompt from a fresh state in one ``rwkv_eval_sequence_in_chunks`` call whose chunk
  size is the prompt length (a single sequence graph, rwkv.cpp's fastest setting; ``chunk`` picks
  another one: rwkv.cpp's own default / recommendation is 16), logits of the last token only; and
  decode: the given tokens after that prompt, one ``rwkv_eval`` call per token (state updated in
  place, full logits every call). The graphs are built by an untimed warm-up the first time a
  model meets a prompt length / chunk size.

Time on an otherwise idle machine: rwkv.cpp runs ggml's graph on OpenMP (``threads`` = the team
size) with a barrier after every node, and libgomp spin-waits at barriers, so a neighbour taking a
core makes it collapse (100x seen on 2 cores); the server inherits the environment, and
``OMP_WAIT_POLICY=passive`` avoids the collapse (at some cost on an idle machine).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

FLOAT_TYPES = ("FP32", "FP16")
QUANT_TYPES = ("Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q8_0")  # rwkv.cpp's QUANTIZED_FORMAT_NAMES
SUPPORTED = ("rwkv4", "rwkv5", "rwkv6", "rwkv7")  # versions rwkv.cpp's converter and graphs know


def _env(rwkv_cpp_dir: Path) -> dict:
    python_dir = Path(rwkv_cpp_dir) / "src" / "python"
    if not (python_dir / "rwkv_cpp").is_dir():
        raise SystemExit(f"{python_dir}/rwkv_cpp not found: --rwkv-cpp wants the rwkv.cpp folder (sources in "
                         "src/, built library in build/)")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(python_dir.resolve()), env.get("PYTHONPATH")]))
    return env


def check(pth: Path) -> str:
    """The checkpoint's version if rwkv.cpp can run it, else a clear exit."""
    from rwkv_relax.weights import open_weights
    spec = open_weights(pth).spec
    if spec.name not in SUPPORTED:
        raise SystemExit(f"{pth} is {spec.title}; rwkv.cpp's converter supports RWKV v4, v5, v6 and v7 only")
    if Path(pth).suffix != ".pth":
        raise SystemExit(f"{pth}: rwkv.cpp's converter reads BlinkDL .pth checkpoints only")
    return spec.name


def convert(pth: Path, work: Path, rwkv_cpp_dir: Path, types: list[str]) -> dict[str, Path]:
    """``{type: rwkv.cpp model file}``: FP32 / FP16 by rwkv.cpp's converter, quantized types from
    the FP16 file by its quantizer (made even when FP16 itself is not asked for)."""
    types = [t.strip().upper() for t in types if t.strip()]
    bad = [t for t in types if t not in FLOAT_TYPES + QUANT_TYPES]
    if bad:
        raise SystemExit(f"rwkv.cpp types {bad}: choose from {', '.join(FLOAT_TYPES + QUANT_TYPES)}")
    check(pth)
    work.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, __file__, "convert", str(pth), str(work), ",".join(types)],
                          env=_env(rwkv_cpp_dir), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"rwkv.cpp conversion failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    files = json.loads(done.stdout.strip().splitlines()[-1])
    return {t: Path(files[t]) for t in types}


class Peer:
    """A timing server in ``python``; ``round(model_path, prompt, decode)`` -> (prefill, decode)
    tok/s of one round (each model stays loaded between rounds)."""

    def __init__(self, python: str = "python3", rwkv_cpp_dir: Path | str = "", threads: int = 1):
        from timing_server import TimingServer
        self.server = TimingServer("rwkv.cpp", [python, __file__, "serve", str(threads)], env=_env(Path(rwkv_cpp_dir)))

    def round(self, model_path: Path, prompt: list[int], decode: list[int],
              chunk: int | None = None) -> tuple[float, float]:
        """``chunk``: prefill chunk size, default the prompt length (one sequence call)."""
        reply = self.server.request({"model": str(model_path), "prompt": [int(t) for t in prompt],
                                     "decode": [int(t) for t in decode], "chunk": chunk})
        return reply["prefill_tok_s"], reply["decode_tok_s"]

    def close(self):
        self.server.close()


def _convert(pth: str, work: str, types: str) -> None:
    import contextlib

    import torch
    from convert_pytorch_to_ggml import write_state_dict  # rwkv.cpp's src/python, on PYTHONPATH
    wanted = types.split(",")
    floats = [t for t in FLOAT_TYPES if t in wanted or (t == "FP16" and set(wanted) - set(FLOAT_TYPES))]
    state_dict = torch.load(pth, map_location="cpu", weights_only=True)
    if "blocks.0.att.k_k" in state_dict:  # RWKV-7: layer 0's v0/v1/v2 are never read (its value is v_first);
        for name in ("v0", "v1", "v2"):  # rwkv.cpp's loader binds no tensor to them and aborts on them
            state_dict.pop(f"blocks.0.att.{name}", None)  # (GGML_ASSERT "tensor buffer not set")
    files = {}
    with open(Path(work) / "convert.log", "w") as log, contextlib.redirect_stdout(log):
        for dtype in floats:
            files[dtype] = str(Path(work) / f"model-{dtype}.bin")
            write_state_dict(dict(state_dict), files[dtype], dtype)  # a copy: v7 rebinds keys
    del state_dict
    quants = [t for t in wanted if t in QUANT_TYPES]
    if quants:
        from rwkv_cpp.rwkv_cpp_shared_library import load_rwkv_shared_library
        lib = load_rwkv_shared_library()
        for qtype in quants:
            files[qtype] = str(Path(work) / f"model-{qtype}.bin")
            lib.rwkv_quantize_model_file(files["FP16"], files[qtype], qtype)
    print(json.dumps(files), flush=True)


def _serve(threads: int) -> None:
    import ctypes

    from rwkv_cpp.rwkv_cpp_shared_library import load_rwkv_shared_library
    lib = load_rwkv_shared_library()
    models, warm = {}, set()
    for line in sys.stdin:
        req = json.loads(line)
        path, prompt, decode = req["model"], req["prompt"], req["decode"]
        if path not in models:
            ctx = lib.rwkv_init_from_file(path, threads, 0)
            state = (ctypes.c_float * lib.rwkv_get_state_buffer_element_count(ctx))()
            logits = (ctypes.c_float * lib.rwkv_get_logits_buffer_element_count(ctx))()
            models[path] = ctx, ctypes.addressof(state), ctypes.addressof(logits), state, logits
        ctx, sp, lp = models[path][:3]
        chunk = req.get("chunk") or len(prompt)
        if (path, len(prompt), chunk) not in warm:  # builds the sequence and the single-token graphs
            warm.add((path, len(prompt), chunk))
            lib.rwkv_eval_sequence_in_chunks(ctx, prompt, chunk, None, sp, lp)
            lib.rwkv_eval(ctx, decode[0] if decode else prompt[-1], sp, sp, lp)
        t0 = time.perf_counter()
        lib.rwkv_eval_sequence_in_chunks(ctx, prompt, chunk, None, sp, lp)  # None: a fresh state
        t1 = time.perf_counter()
        for token in decode:
            lib.rwkv_eval(ctx, token, sp, sp, lp)
        t2 = time.perf_counter()
        print(json.dumps({"prefill_tok_s": len(prompt) / (t1 - t0),
                          "decode_tok_s": len(decode) / (t2 - t1) if decode else 0.0}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "convert":
        _convert(*sys.argv[2:5])
    else:
        _serve(int(sys.argv[2]))
