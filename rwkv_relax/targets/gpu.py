"""The Relax pipeline shared by the GPU targets (cuda, metal, iphone, android, webgpu, vulkan):
re-target our hand-written kernels to their thread-bound GPU forms, fuse, schedule everything
else with dlight, lower."""
from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.backend import gpu_generic
from tvm.s_tir import dlight as dl

from .retarget import retarget_kernels


class SafeMatmul(dl.gpu.Matmul):
    """dlight's Matmul rule without its tensor-core branches, which crash the 0.27 compiler
    (segfault in Tensorize) for fp16 prefill matmuls on cuda sm_80+ and for metal: CUDA is
    scheduled as for a pre-tensor-core arch; metal declines and GEMV/Fallback take over."""

    def apply(self, func, target, tunable):
        if target.kind.name == "metal":
            return None
        if target.kind.name == "cuda":
            attrs = {k: v for k, v in target.export().items() if k not in ("keys", "tag", "host")}
            attrs["arch"] = "sm_61"
            target = tvm.target.Target(attrs)
        return super().apply(func, target, tunable)


class SafeGEMV(dl.gpu.GEMV):
    """dlight's GEMV rule, declining where it crashes: with a symbolic batch, a per-row dot
    product that reads a (H, N) vector (RWKV-7's bonus ``sum(r * k * r_k)``) looks like a GEMV
    to it, and its thread split then fails on a symbolic extent (``'FloorDiv' object has no
    attribute 'value'`` in 0.27). The reduction rules after it schedule such functions."""

    def apply(self, func, target, tunable):
        try:
            return super().apply(func, target, tunable)
        except AttributeError:
            return None


def schedule_rules():
    return [SafeMatmul(), SafeGEMV(), dl.gpu.LowBatchGEMV(4), dl.gpu.Reduction(),
            dl.gpu.GeneralReduction(), dl.gpu.Fallback()]


def gpu_pipeline(target: tvm.target.Target, after_memory_plan=()) -> tvm.transform.Pass:
    """``after_memory_plan``: passes run right after StaticPlanBlockMemory (cuda's graph capture)."""
    @tvm.transform.module_pass(opt_level=0, name="RWKVGPUPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        finalize = gpu_generic.finalize_passes(target)
        assert finalize[0].info.name == "StaticPlanBlockMemory", finalize[0].info.name
        finalize[1:1] = list(after_memory_plan)
        with target:
            seq = [retarget_kernels(lambda _: "gpu")] + gpu_generic.library_dispatch_passes(target) + [
                relax.transform.FuseTransposeMatmul(),
                relax.transform.LegalizeOps(),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(),
                relax.transform.FuseOps(),
                relax.transform.FuseTIR(),
                dl.ApplyDefaultSchedule(*schedule_rules()),
            ] + gpu_generic.dataflow_lower_passes(target) + finalize
            return tvm.transform.Sequential(seq)(mod)
    return _pipeline
