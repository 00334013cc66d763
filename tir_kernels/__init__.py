"""Hand-authored TIR kernels (TVMScript) for rwkv_relax, each with a numpy twin.

Kernels are factories: they take the static sizes and return a PrimFunc. Models call them
through ``tvm.relax.frontend.nn.op.tensor_ir_op``; tests compare them against the numpy twins.
"""

import json

from tvm import tirx

from . import ffn_value, quant_matmul, rnn_state, sampling, wkv4, wkv5, wkv6, wkv7

# name -> factory(*sizes, target=...). Models build the "cpu" form through :func:`kernel`; GPU
# pipelines swap in the "gpu" form through :func:`retarget`, so models never see targets.
FACTORIES = {
    "wkv5": wkv5.wkv5,
    "wkv5_ragged": wkv5.wkv5_ragged,
    "wkv6": wkv6.wkv6,
    "wkv6_ragged": wkv6.wkv6_ragged,
    "wkv7": wkv7.wkv7,
    "wkv7_ragged": wkv7.wkv7_ragged,
    "wkv4": wkv4.wkv4,
    "wkv4_ragged": wkv4.wkv4_ragged,
    "q_gemv": quant_matmul.q_gemv,
    "ffn_value": ffn_value.ffn_value,
    "ffn_value_q": ffn_value.ffn_value_q,
    "state_copy": rnn_state.state_copy,
    "sample_logits": sampling.sample_logits,
}
# kernels with a CPU form named after an instruction-set feature; the llvm pipeline swaps it in
# when the target has the feature (the default "cpu" forms are portable)
FEATURE_FORMS = {"avx2": ("q_gemv",)}
# attributes that name a kernel; retarget() carries these (and the symbol) over, nothing else:
# a form's own attributes (e.g. tirx.is_scheduled on the CPU GEMV) must not leak into another
TAG_ATTRS = ("rwkv_kernel", "rwkv_kernel_args", "global_symbol")


def kernel(name: str, *args: int | str | list[int]) -> tirx.PrimFunc:
    """The default (CPU) form of kernel ``name``, tagged so that a pipeline can re-target it.
    ``args`` are the factory's static arguments (sizes, dtypes)."""
    func = FACTORIES[name](*args, target="cpu")
    return func.with_attr("rwkv_kernel", name).with_attr("rwkv_kernel_args", json.dumps(list(args)))


def retarget(func: tirx.PrimFunc, form: str) -> tirx.PrimFunc:
    """The ``form`` ("cpu" / "gpu") of a tagged kernel, with the tag and symbol carried over."""
    name = str(func.attrs["rwkv_kernel"])
    new = FACTORIES[name](*json.loads(str(func.attrs["rwkv_kernel_args"])), target=form)
    for key in TAG_ATTRS:
        if key in func.attrs:
            new = new.with_attr(key, func.attrs[key])
    return new
