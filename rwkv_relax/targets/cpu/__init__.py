"""llvm: this machine's CPU. The preset, and its compile pipeline: TVM's default llvm pipeline
with our instruction-set kernel forms swapped in and the matmul schedule (``matmul.py``) added."""
from __future__ import annotations

import os

from ...errors import ConfigError
from ..preset import TargetPreset, export_plain


def host_cpu() -> str:
    """The host CPU name LLVM knows (TVM's default llvm target is generic x86-64, unvectorised)."""
    import tvm
    return tvm.get_global_func("target.llvm_get_system_cpu")()


def _llvm(chip: str | None) -> dict:
    return {"kind": "llvm", "mcpu": chip or host_cpu(), "num-cores": os.cpu_count() or 1}


def int8_form(target) -> str | None:
    """The int8-activation GEMV form this target can run (``vpdpbusd`` with AVX512-VNNI,
    ``vpmaddubsw`` with AVX2), or None."""
    from tvm.target import codegen
    if codegen.target_has_features("avx512vnni", target) and codegen.target_has_features("avx512vl", target):
        return "int8_vnni"
    return "int8_avx2" if codegen.target_has_features("avx2", target) else None


def check_int8_activations(target) -> None:
    """Refuse ``--cpu-int8-activations`` for a CPU without the integer dot products it needs."""
    if int8_form(target) is None:
        raise ConfigError(f"--cpu-int8-activations needs an x86 CPU with AVX2 (llvm -mcpu "
                          f"{target.attrs.get('mcpu', '?')} has none); drop the flag or pass --chip of such a CPU")


def retarget_for_cpu_features(target, int8_activations: bool = False):
    """Swap tagged kernels for their instruction-set form (``tir_kernels.FEATURE_FORMS``) where the
    target has that feature, e.g. the int16 ``vpmaddwd`` decode GEMV on AVX2 (the default forms
    are portable); with ``int8_activations`` the decode GEMV on int8 activations instead."""
    from tvm.target import codegen

    from tir_kernels import FEATURE_FORMS

    from ..retarget import retarget_kernels
    forms = {name: form for form, names in FEATURE_FORMS.items()
             if codegen.target_has_features(form, target) for name in names}
    if int8_activations:
        check_int8_activations(target)
        forms["q_gemv"] = int8_form(target)
    return retarget_kernels(forms.get, "RetargetKernelsForCPU")


def cpu_pipeline(target, tile=None, int8_activations: bool = False):
    """``relax.get_default_pipeline(llvm)`` with our kernels' instruction-set forms,
    FuseTransposeMatmul in front of legalization (``x @ W.T`` becomes one NT_matmul, not a
    transpose kernel plus a matmul), vectorisable transcendentals (``fast_math``), and the matmul
    and elementwise schedules after FuseTIR. ``int8_activations``: the quantized decode GEMVs
    quantize their activations to int8 per group (``build --cpu-int8-activations``)."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
    from tvm.target import Target

    from . import fast_math
    from .elementwise import schedule_injective
    from .matmul import schedule_matmuls
    target = Target(target) if not isinstance(target, Target) else target

    @tvm.transform.module_pass(opt_level=0, name="RWKVCPUPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            seq = tvm.transform.Sequential(
                [retarget_for_cpu_features(target, int8_activations), relax.transform.FuseTransposeMatmul()]
                + cpu_generic.library_dispatch_passes(target)
                # exp/sigmoid/tanh/silu as arithmetic that vectorises (the default is scalar expf calls)
                + [relax.transform.LegalizeOps(customize_legalize_map=fast_math.legalize_map())]
                + cpu_generic.legalize_passes(target)  # Legalize, AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR
                + [schedule_matmuls(tile), schedule_injective(),
                   tvm.tirx.transform.ConvertSSA()]  # inlining may have copied a Let (fast_math)
                + cpu_generic.dataflow_lower_passes(target)
                + cpu_generic.finalize_passes(target))
            return seq(mod)

    return _pipeline


LLVM = TargetPreset("llvm", _llvm, ".so", export_plain, False, "this machine's CPU (LLVM, host -mcpu)",
                    pipeline=cpu_pipeline, chip_help="an LLVM -mcpu name (default: this host's)", sampler=True)
