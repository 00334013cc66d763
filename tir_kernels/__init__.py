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


# (name, args as JSON, form) -> the factory's PrimFunc. A factory parses TVMScript (~0.3-0.5 s for
# a GEMV): without the cache a 24-layer model parsed the same GEMV once per layer, 111 s of a 1.5B
# q4f16_1 export. PrimFuncs are immutable, so one object serves every call (kernel() and retarget()).
_FORMS: dict[tuple[str, str, str], tirx.PrimFunc] = {}


def _form(name: str, args: str, form: str) -> tirx.PrimFunc:
    if (name, args, form) not in _FORMS:
        _FORMS[name, args, form] = FACTORIES[name](*json.loads(args), target=form)
    return _FORMS[name, args, form]


def kernel(name: str, *args: int | str | list[int]) -> tirx.PrimFunc:
    """The default (CPU) form of kernel ``name``, tagged so that a pipeline can re-target it.
    ``args`` are the factory's static arguments (sizes, dtypes)."""
    args_json = json.dumps(list(args))
    return _form(name, args_json, "cpu").with_attr("rwkv_kernel", name).with_attr("rwkv_kernel_args", args_json)


def retarget(func: tirx.PrimFunc, form: str) -> tirx.PrimFunc:
    """The ``form`` ("cpu" / "gpu") of a tagged kernel, with the tag and symbol carried over."""
    new = _form(str(func.attrs["rwkv_kernel"]), str(func.attrs["rwkv_kernel_args"]), form)
    for key in TAG_ATTRS:
        if key in func.attrs:
            new = new.with_attr(key, func.attrs[key])
    return new
