"""The one pass that swaps our tagged hand-written kernels for another of their forms.

Models build every kernel in its default ("cpu") form, tagged by ``tir_kernels.kernel``; a target
pipeline runs :func:`retarget_kernels` with a rule that names the form it wants for a kernel
(the GPU form on GPUs, an instruction-set form such as the AVX2 int16 GEMV on llvm), or None to
keep it."""
from __future__ import annotations

from typing import Callable

import tvm
from tvm import tirx

from tir_kernels import retarget


def retarget_kernels(form_for: Callable[[str], str | None], name: str = "RetargetKernels") -> tvm.transform.Pass:
    """A module pass: every PrimFunc tagged ``rwkv_kernel`` becomes ``form_for(kernel name)``."""

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        updates = {}
        for gv, func in mod.functions.items():
            if isinstance(func, tirx.PrimFunc) and func.attrs is not None and "rwkv_kernel" in func.attrs:
                form = form_for(str(func.attrs["rwkv_kernel"]))
                if form is not None:
                    updates[gv] = retarget(func, form)
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return _pass
