"""The llvm schedule for injective kernels (a dlight rule): what is left after the matmul rule.

TVM's default llvm pipeline runs elementwise kernels (token-shift mixes, gates, casts, residual
adds) as plain loop nests on one core. For prefill they are whole (T, C) tensors, so each
becomes: producers inlined into the last block, the last (contiguous) axis split into SIMD-wide
vectors, and the outer axes fused into one ``parallel`` loop when there is enough work for the
thread pool (a one-token decode step keeps them serial: a parallel launch costs more than a
768-element loop).
"""
from __future__ import annotations

import math

import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.target import Target

from .matmul import _const, _inline_spatial, simd_lanes

PARALLEL_MIN = 1 << 15  # elements below which a kernel stays on one core (decode: C = 768..4096)


class InjectiveCPU(dl.ScheduleRule):
    """dlight rule: ``parallel`` outer axes + vectorised last axis for all-spatial PrimFuncs."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        try:
            return self._apply(func, target)
        except (RuntimeError, ValueError):  # ScheduleError, TVM errors: leave it as it was
            return None

    @staticmethod
    def _apply(func: tirx.PrimFunc, target: Target) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos:
            return None
        if any(not b.is_injective() for b in infos):
            return InjectiveCPU._rows(sch, infos)
        last = sch.get(infos[-1].block_rv).name_hint
        _inline_spatial(sch, {last})
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        if len(blocks) != 1:
            return None
        block = blocks[0]
        loops = sch.get_loops(block)
        if not loops:
            return None
        lanes = simd_lanes(target)
        extents = [_const(sch.get(lp).extent) for lp in loops]
        work = None if None in extents else math.prod(extents)
        inner, outer, vec = extents[-1], loops[:-1], None
        if inner is not None and inner % lanes == 0 and inner >= lanes:
            _, vec = sch.split(loops[-1], [None, lanes])
        if outer and (work is None or work >= PARALLEL_MIN):
            par = sch.fuse(*outer) if len(outer) > 1 else outer[0]
            sch.parallel(par)
        if vec is not None:
            sch.vectorize(vec)
        return sch

    @staticmethod
    def _rows(sch: s_tir.Schedule, infos) -> s_tir.Schedule | None:
        """Row-wise kernels (LayerNorm, GroupNorm, row sums: reductions over the last axes only,
        every block led by the same row axis): every block computed inside the last block's row
        loop, which runs in parallel when there are enough elements."""
        if len(infos) > 8 or any(b.is_reduction() and "S" not in b.dom_kind()[:1] for b in infos):
            return None
        blocks = [b.block_rv for b in infos]
        out = sch.get(blocks[-1]).writes[0].source
        row = sch.get_loops(blocks[-1])[0]
        rows = _const(sch.get(row).extent)
        # the loop must be the output's row axis (a one-row kernel's unit axis is normalised away,
        # leaving the channel loop first: computing the row sums inside it would repeat them C times)
        if len(out.shape) < 2 or _const(out.shape[0]) == 1 or not _same(sch.get(row).extent, out.shape[0]):
            return None
        for block in reversed(blocks[:-1]):
            sch.compute_at(block, row, preserve_unit_loops=True)
        width = [_const(sch.get(lp).extent) for lp in sch.get_loops(blocks[-1])[1:]]
        work = None if rows is None or None in width else rows * math.prod(width)
        if rows != 1 and (work is None or work >= PARALLEL_MIN):
            sch.parallel(row)
        return sch


def _same(a, b) -> bool:
    """Equal extents: the same constant, or the same symbolic expression."""
    ca, cb = _const(a), _const(b)
    return ca == cb if ca is not None or cb is not None else tvm_ffi.structural_equal(a, b)


def schedule_injective():
    """The pass alone (needs a target in scope)."""
    return dl.ApplyDefaultSchedule(InjectiveCPU())
