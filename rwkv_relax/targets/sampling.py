"""The next-token draw attached to a library (``tir_kernels/sampling.py``) for targets whose
preset says ``sampler=True``: the runtime draws where the logits are instead of copying them to
numpy (``CompiledModel.sample``)."""
from __future__ import annotations

import tvm
from tvm import relax

SAMPLER = "sample_logits"


def attach_sampler(mod: tvm.IRModule, metadata: dict) -> tvm.IRModule:
    """Add ``sample_logits(logits (D0, D1, V), adj_row, adj_id, adj_sub (P,), params (D0 * D1, 4))
    -> (D0 * D1,) int32``: the next-token draw of ``tir_kernels/sampling.py`` on each of the
    D0 * D1 rows, taking the logits exactly as prefill / decode / batch_decode return them. It is
    recorded in ``metadata`` ("sampler") so that the runtime knows it may call it."""
    from tir_kernels import kernel
    V = int(metadata["vocab_size"])
    d0, d1, n_adjust = (tvm.tirx.Var(name, "int64") for name in ("d0", "d1", "n_adjust"))
    logits = relax.Var("logits", relax.TensorType((d0, d1, V), "float32"))
    rest = [relax.Var("adj_row", relax.TensorType((n_adjust,), "int32")),
            relax.Var("adj_id", relax.TensorType((n_adjust,), "int32")),
            relax.Var("adj_sub", relax.TensorType((n_adjust,), "float32")),
            relax.Var("params", relax.TensorType((d0 * d1, 4), "float32"))]
    bb = relax.BlockBuilder(mod)
    with bb.function(SAMPLER, [logits, *rest]):
        gv = bb.add_func(kernel("sample_logits", V), "sample_logits_kernel")
        with bb.dataflow():
            both = bb.emit(relax.call_tir_inplace(gv, [logits, *rest], [0, -1],
                                                  [relax.TensorType((d0, d1, V), "float32"),
                                                   relax.TensorType((d0 * d1,), "int32")]))
            token = bb.emit_output(relax.TupleGetItem(both, 1))
        bb.emit_func_output(token)
    metadata["sampler"] = SAMPLER
    return bb.get()
