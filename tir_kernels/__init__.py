"""Hand-authored TIR kernels (TVMScript) for rwkv_relax, each with a numpy twin.

Kernels are factories: they take the static sizes and return a PrimFunc. Models call them
through ``tvm.relax.frontend.nn.op.tensor_ir_op``; tests compare them against the numpy twins.
"""
