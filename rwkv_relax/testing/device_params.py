"""Random parameters made on the device itself, in a library's own layout (its
``_metadata["params"]``): a speed test of a 7B model then uploads nothing and writes no 14 GB
checkpoint. Each tensor is filled by a hash of its element index (one small TVM kernel per dtype,
compiled for the same target as the model), so the values depend on the seed alone.

Scales keep activations finite, not realistic: matrices uniform in +-1/sqrt(fan-in), 4-bit
weights random bits with scales to match, vectors (norms, mixes, decays) uniform in [0, 1).
"""
from __future__ import annotations

import math

import tvm
from tvm.script import tirx as T

from ..quantization import get_mode
from ..weights import QUANTIZED_SUFFIXES

_THREADS = 256
DTYPES = ("uint32", "float16", "float32")


def _fill_kernel(dtype: str, gpu: bool):
    """``fill(a (n,), seed, lo, hi)``: a[i] = hash(i, seed) (uint32) or lo + (hi - lo) * u, u in [0, 1)."""
    threads = _THREADS

    @T.prim_func(private=True)
    def fill(var_a: T.handle, seed: T.uint32, lo: T.float32, hi: T.float32):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        a = T.match_buffer(var_a, (n,), dtype)
        for bx in (T.thread_binding((n + threads - 1) // threads, thread="blockIdx.x") if gpu
                   else T.parallel((n + threads - 1) // threads)):
            for tx in (T.thread_binding(threads, thread="threadIdx.x") if gpu else T.serial(threads)):
                if bx * threads + tx < n:
                    # murmur3's finaliser: every bit of the index and seed moves every output bit
                    h0 = T.Cast("uint32", bx * threads + tx) * T.uint32(0x9E3779B1) ^ seed
                    h1 = (h0 ^ (h0 >> T.uint32(16))) * T.uint32(0x85EBCA6B)
                    h2 = (h1 ^ (h1 >> T.uint32(13))) * T.uint32(0xC2B2AE35)
                    h3 = h2 ^ (h2 >> T.uint32(16))
                    if dtype == "uint32":
                        a[bx * threads + tx] = h3
                    else:  # the top 24 bits: exact in float32
                        a[bx * threads + tx] = T.Cast(dtype, lo + (hi - lo) * T.Cast("float32", h3 >> T.uint32(8))
                                                      * T.float32(1.0 / 16777216))
    return fill


_COMPILED: dict[str, dict] = {}


def fill_functions(target) -> dict:
    """dtype -> the fill function compiled for ``target`` (a tvm.target.Target), once per target."""
    key = str(target)
    if key not in _COMPILED:
        from ..targets import get_target
        gpu = target.kind.name != "llvm"
        mod = tvm.IRModule({f"fill_{d}": _fill_kernel(d, gpu).with_attr("global_symbol", f"fill_{d}")
                            for d in DTYPES})
        with target:
            if target.kind.name == "cuda":
                get_target("cuda").prepare()  # nvcc, as the model libraries are built
            lib = tvm.compile(mod, target)
        _COMPILED[key] = {d: lib[f"fill_{d}"] for d in DTYPES}
    return _COMPILED[key]


def value_range(name: str, shape: list[int], dtype: str, quantization: str) -> tuple[float, float]:
    """(lo, hi) of the uniform values of parameter ``name`` (unused for uint32 bits). Fan-in is
    taken as the larger dimension, whichever way a layout stores a matrix (the channel-mix value is
    hidden-major, ``*_t``): at worst the values come out smaller than needed, never larger."""
    if name.rpartition(".")[2].startswith(QUANTIZED_SUFFIXES[1]):  # q_scale(_t): codes in [-2^(b-1), 2^(b-1))
        mode = get_mode(quantization)
        top = 1 / math.sqrt(max(shape[0], shape[-1] * mode.group_size)) / 2 ** (mode.weight_bits - 1)
        return top / 2, top
    if len(shape) >= 2 and min(shape) > 1:  # a matrix, the embedding (V, C) too (ln0 normalises it)
        bound = 1 / math.sqrt(max(shape))
        return -bound, bound
    return 0.0, 1.0


def random_params(params: list[dict], quantization: str, device, target, seed: int = 0) -> list:
    """One tensor per entry of ``params`` (``[{"name", "shape", "dtype"}]``) on ``device``, filled
    there by the kernels compiled for ``target`` (the model's TVM target)."""
    fills = fill_functions(target)
    out = []
    for i, p in enumerate(params):
        if p["dtype"] not in fills:
            raise ValueError(f"no random fill for {p['name']}'s dtype {p['dtype']}; add it to DTYPES")
        tensor = tvm.runtime.empty(tuple(p["shape"]), p["dtype"], device)
        lo, hi = value_range(p["name"], p["shape"], p["dtype"], quantization)
        fills[p["dtype"]](tensor._create_view((math.prod(p["shape"]),)), (seed * 7919 + i) & 0xFFFFFFFF, lo, hi)
        out.append(tensor)
    return out

