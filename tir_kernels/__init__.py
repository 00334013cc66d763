"""Hand-authored TIR kernels (TVMScript) for rwkv_relax, each with a numpy twin.

Kernels are factories: they take the static sizes and return a PrimFunc. Models call them
through ``tvm.relax.frontend.nn.op.tensor_ir_op``; tests compare them against the numpy twins.
"""

from tvm import tirx

from . import wkv4, wkv5

# name -> factory(*sizes, target=...). Models build the "cpu" form through :func:`kernel`; GPU
# pipelines swap in the "gpu" form through :func:`retarget`, so models never see targets.
FACTORIES = {
    "wkv5": wkv5.wkv5,
    "wkv5_ragged": wkv5.wkv5_ragged,
    "wkv4": wkv4.wkv4,
    "wkv4_ragged": wkv4.wkv4_ragged,
}


def kernel(name: str, *sizes: int) -> tirx.PrimFunc:
    """The default (CPU) form of kernel ``name``, tagged so that a pipeline can re-target it."""
    func = FACTORIES[name](*sizes, target="cpu")
    return func.with_attr("rwkv_kernel", name).with_attr("rwkv_kernel_sizes", [int(s) for s in sizes])


def retarget(func: tirx.PrimFunc, form: str) -> tirx.PrimFunc:
    """The ``form`` ("cpu" / "gpu") of a tagged kernel, keeping the function's other attributes."""
    name = str(func.attrs["rwkv_kernel"])
    sizes = [int(s) for s in func.attrs["rwkv_kernel_sizes"]]
    new = FACTORIES[name](*sizes, target=form)
    for key, value in func.attrs.items():
        if key not in new.attrs or key == "global_symbol":
            new = new.with_attr(key, value)
    return new
