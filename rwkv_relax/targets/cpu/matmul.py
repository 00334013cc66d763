"""The llvm schedule for the model's matmuls (a dlight rule).

Every ``Linear`` computes ``y[m, n] = sum_k x[m, k] * W[n, k]`` with W kept as the checkpoint
stores it, (N, K) row-major, so each output column reads one contiguous weight row. Unscheduled,
that reduction runs one scalar multiply-add per element on one core (~3 GB/s of weights). The
rule below keeps the layout and instead

* vectorises over k: ``k = ko * V + ki`` and ``rfactor(ki)``, so each output gets a V-lane fp32
  accumulator (one SIMD register) updated by FMAs on contiguous x and W loads; for tiles of
  several rows the lanes are then summed by halving (16 -> 8 -> 4 -> 2 -> 1), the register read
  whole and halved by shuffles, an extract and an add per step (``_with_shuffled_lane_sums``);
* tiles ``rows x cols`` outputs per register block (decode M = 1: 1 x 8 weight rows sharing each
  x load; prefill: 4 x 3 on AVX2, 4 x 6 on AVX-512, so every load feeds several FMAs) and keeps
  the accumulators in a ``local`` buffer that LLVM promotes to registers;
* runs the tiles on all cores (``parallel`` over the fused row-tile x column-tile loop);
* pads a symbolic (or ragged) token count up to the row tile with ``pad_einsum`` (a copy of x,
  O(M*K)) instead of a predicate: a ``row < M`` test inside the k loop costs 5x;
* computes the fused elementwise epilogue (sigmoid, relu^2, residual add, casts) per tile (GEMV)
  or per task (GEMM: all its column tiles, vectorised), while the outputs are hot, and inlines
  injective prologues (token-shift mix) into the x loads;
* for a group-quantized W with more than one row (prefill, batches), keeps the dequantize as a
  block computed once per task into an fp32 block of W rows (<= ``block_bytes``, L2-resident)
  that the task's token tiles then sweep, instead of unpacking every weight again per 4 tokens.
  (One-row decode never gets here: it calls the hand-written GEMV of tir_kernels/quant_matmul.)
  A float W (K >= ``MIN_COPY_K``) gets the same treatment as a copy, widened to fp32, and fp16 x
  is widened in its padded copy, so the inner loop is fp32 loads and FMAs only: a conversion per
  load (``vcvtph2ps``) competes with the FMAs for their ports (RWKV-7 0.1B q0f16 prefill +15%).
  The block is stored packed by register tile (the ``cols`` W vectors of one k step adjacent).
  With a symbolic token count the function also holds a form without the block for calls of one
  row (a batch decode of one sequence), picked at run time, with identical arithmetic.

A GEMM with a short float reduction (K <= ``SMALL_K``, RWKV-6/7's LoRA up-projections) is
vectorised along n instead (``_apply_small_k``): at K = 64 the lane sums cost more than the FMAs
(RWKV-7 0.1B prefill q0f32 915 -> 970 tok/s, q0f16 965 -> 989, same run).

Functions marked ``tirx.is_scheduled`` (the hand-written WKV kernels) and functions that are not
such a matmul are left exactly as they are.

The ``parallel`` loops use TVM's runtime thread pool, which on x86 starts hardware_concurrency/2
workers (it assumes SMT): one thread on a 2-vCPU VM without SMT, i.e. half the bandwidth. The
runtime sizes it (``runtime/threads.py``) before the first call.
"""
from __future__ import annotations

import dataclasses
import math

import tvm
from tvm import s_tir, tirx
from tvm.ir.expr import TensorLoad
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis import SBlockInfo, normalize_prim_func
from tvm.target import Target, codegen


# --------------------------------------------------------------------------------------------
# Tile choice
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Tile:
    """Register tile: ``rows x cols`` outputs computed together, each a ``lanes``-wide fp32
    accumulator over k. ``rows * cols`` accumulators must fit the SIMD register file with room
    for the x and W loads, or LLVM spills them and the inner loop runs ~4x slower."""

    rows: int
    cols: int
    lanes: int


def simd_lanes(target: Target) -> int:
    """fp32 lanes of one SIMD register: 16 with AVX-512, 8 with AVX/AVX2, else 4 (SSE, NEON)."""
    if codegen.target_has_features("avx512f", target):
        return 16
    if codegen.target_has_features("avx", target):
        return 8
    return 4


def simd_registers(lanes: int) -> int:
    """Vector registers: zmm0-31 with AVX-512 (16 fp32 lanes), else 16 (ymm / xmm)."""
    return 32 if lanes == 16 else 16


def _largest_divisor(n: int, at_most: int) -> int:
    return next(d for d in range(min(n, at_most), 0, -1) if n % d == 0)


def choose_tile(m: int | None, n: int, k: int, target: Target) -> Tile | None:
    """Tile for an (m, n, k) NT matmul; ``m`` is None when symbolic. None: not worth it / k not
    vectorisable (k % 4 != 0 never happens in RWKV; such a matmul stays unscheduled)."""
    lanes = simd_lanes(target)
    while lanes > 1 and k % lanes:
        lanes //= 2
    if lanes < 4:
        return None
    n_regs = simd_registers(lanes)
    if m == 1:
        # GEMV: bandwidth bound; 8 weight rows share each x load and give 8 independent FMA chains
        return Tile(1, _largest_divisor(n, 8), lanes)
    # GEMM: rows*cols accumulators + cols W registers + one x register must fit: 4x3 on 16
    # registers, 4x6 on 32. (4x7, which the old bound n_regs - 4 allowed for N = 2688, spills: the
    # RWKV-5 0.1B FFN key GEMM ran 1.36x slower than at 4x6.) The 4x6 accumulators (1.5 KiB)
    # exceed TVM's 1 KiB stack-array bound and get a workspace, but LLVM keeps them in registers
    # through the k loop of the model's kernels (checked in their assembly; some isolated
    # bench_matmul builds store every FMA instead, which halves their GFLOP/s).
    rows = 4 if m is None or m >= 4 else m
    cols = _largest_divisor(n, (n_regs - 1) // (rows + 1))
    return Tile(rows, cols, lanes)


# --------------------------------------------------------------------------------------------
# Pattern
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _NTMatmul:
    """Iterator roles of a matched reduction block (indices into its iter vars)."""

    m_iters: list[int]  # output rows (tokens, batch); the last one is tiled
    n_iter: int  # output column = weight row
    k_iter: int  # reduction = contiguous last axis of x and W


def _uses(expr, var: tirx.Var) -> bool:
    return any(v.same_as(var) for v in tirx.analysis.undefined_vars(expr))


def match_nt_matmul(sch: s_tir.Schedule, info: SBlockInfo) -> _NTMatmul | None:
    """``out[..m.., n] (+)= f(x[..m.., k], W[n, k], ...)``: one reduction iter k that is the
    unit-stride last index of every buffer depending on it; one or more reads are indexed exactly
    ``[n, k]`` (the weight, maybe with a cast around it); no other read depends on n."""
    block = sch.get(info.block_rv)
    kinds = info.dom_kind()
    if kinds.count("R") != 1 or "O" in kinds or len(block.writes) != 1:
        return None
    ivars = [iv.var for iv in block.iter_vars]
    k_iter = kinds.index("R")
    k_var = ivars[k_iter]
    spatial = [i for i, c in enumerate(kinds) if c == "S"]
    # output indexed by the spatial iters in order; unit dims (M = 1) show up as constants
    out_idx = [r.min for r in block.writes[0].region if not isinstance(r.min, tirx.IntImm)]
    if len(out_idx) != len(spatial) or any(not e.same_as(ivars[i]) for e, i in zip(out_idx, spatial)):
        return None
    n_iter = None
    for read in block.reads:
        idx = [r.min for r in read.region]
        if not any(_uses(e, k_var) for e in idx):
            continue  # e.g. a bias
        # k exactly the last index and nowhere else: contiguous vector loads
        if not idx[-1].same_as(k_var) or any(_uses(e, k_var) for e in idx[:-1]):
            return None
        if len(idx) == 2 and any(idx[0].same_as(ivars[i]) for i in spatial):
            j = next(i for i in spatial if idx[0].same_as(ivars[i]))
            if out_idx[-1].same_as(ivars[j]):  # W[n, k] with n the output column
                if n_iter not in (None, j):
                    return None
                n_iter = j
    if n_iter is None:
        return None
    n_var = ivars[n_iter]
    has_x = False
    for read in block.reads:  # only W[n, k] may depend on n; some x[.., k] must not
        idx = [r.min for r in read.region]
        on_n = any(_uses(e, n_var) for e in idx)
        if on_n and not (len(idx) == 2 and idx[0].same_as(n_var)):
            return None
        has_x |= not on_n and _uses(idx[-1], k_var)
    if not has_x:
        return None  # a plain row sum, not a product
    return _NTMatmul([i for i in spatial if i != n_iter], n_iter, k_iter)


def _const(e) -> int | None:
    """A static extent as int, None when symbolic."""
    return int(e) if isinstance(e, (int, tirx.IntImm)) else None


def _short_reduction(sch: s_tir.Schedule, found: tuple, target: Target) -> bool:
    """Whether ``_apply_small_k`` takes the matched matmul: token rows (at least a 4-row tile, or
    symbolic), K <= SMALL_K, N in whole vectors, and a float W it can copy (not a dequantize)."""
    main_rv, pattern, _, n, k, m_ext = found
    if not pattern.m_iters or k > SMALL_K or n % simd_lanes(target):
        return False
    if m_ext[-1] is not None and m_ext[-1] < 4:
        return False
    return _dequantize_producer(sch, main_rv) is None and _float_weight(sch.get(main_rv)) is not None


def _matched(sch: s_tir.Schedule):
    """(main block, pattern, its iter extents, n, k, m extents) when ``sch``'s function is one NT
    matmul (plus spatial blocks) with static n and k, else None."""
    infos = normalize_prim_func(sch)
    if infos is None or sum(b.is_reduction() for b in infos) != 1:
        return None
    main = next(b for b in infos if b.is_reduction())
    pattern = match_nt_matmul(sch, main)
    if pattern is None:
        return None
    ext = [it.dom for it in main.iters]
    n, k = _const(ext[pattern.n_iter]), _const(ext[pattern.k_iter])
    if n is None or k is None:
        return None
    return main.block_rv, pattern, ext, n, k, [_const(ext[i]) for i in pattern.m_iters]


# --------------------------------------------------------------------------------------------
# The rule
# --------------------------------------------------------------------------------------------
class NTMatmulCPU(dl.ScheduleRule):
    """dlight rule: schedule ``epilogue(prologue(x) @ W.T)`` for llvm (see the module doc).

    ``tile`` forces one tile for every matmul (benchmarks); by default ``choose_tile`` picks one
    per shape and target. ``block_bytes`` bounds the weight rows one task sweeps for all its
    row tiles (kept in L2 while x streams past). ``one_row_form``: a symbolic-T matmul also
    gets a form for calls with one row that reads W directly instead of through that block
    (``_two_forms``).
    """

    def __init__(self, tile: Tile | None = None, block_bytes: int = 256 * 1024, one_row_form: bool = True):
        self.tile = tile
        self.block_bytes = block_bytes
        self.one_row_form = one_row_form

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        try:
            sch = s_tir.Schedule(func)
            found = _matched(sch)
            if found is None:
                return None
            if _short_reduction(sch, found, target):
                try:
                    return self._apply_small_k(sch, found, target)
                except (RuntimeError, ValueError):  # not this form: the general one, from scratch
                    sch = s_tir.Schedule(func)
                    found = _matched(sch)
            if self.one_row_form and _one_row_form_applies(sch, found):
                return self._two_forms(func, sch, found, target)
            return self._apply(sch, found, target)
        except (RuntimeError, ValueError):  # ScheduleError, TVM errors: leave it unscheduled
            return None

    def _two_forms(self, func: tirx.PrimFunc, sch: s_tir.Schedule, found: tuple, target: Target
                   ) -> s_tir.Schedule | None:
        """A symbolic token count (prefill and the batch functions) with a W block (a group-
        quantized W, or a float one that the form for many rows copies): that form (W
        dequantized or widened once per task into fp32, swept by every 4-token tile), and, when
        the call has a single row (the server's batch_decode of one sequence), the same
        reduction reading W where it is, each weight unpacked or widened in its load, with a
        one-row tile. For one row the block form spends its time storing and reloading fp32
        weights that its one tile reads once (and pads the row to four): 4096 x 768 q4 0.74 ->
        0.23 ms. Both forms compute every output with the same operations in the same order
        (``w = (code - qmax) * scale`` or the widened weight in fp32, one FMA per k into lane
        ``k % lanes``, the same halving lane sums, the same epilogue), so a row's result does
        not depend on which form ran: the server's bit-exactness across batch sizes holds
        (test_cpu_schedule, test_serve).

        (A third form, direct with 4-row tiles for 2-8 rows, measured up to 2x faster there but
        cannot be added as a second ``if``: TIR's CSE hoists what both direct forms compute --
        their constant lane-index vectors -- above the parallel loops, which then receive it
        through their closure as a runtime value, and the word loads become gathers, 5x slower.)"""
        block = self._apply(sch, found, target)
        fresh = s_tir.Schedule(func)
        one = self._apply(fresh, _matched(fresh), target, direct_w=True, one_row=True)
        if block is None or one is None:
            return block
        return _branch(_row_count(found) == 1, _suffixed(one.mod["main"], "_one_row"), block.mod["main"])

    def _apply_small_k(self, sch: s_tir.Schedule, found: tuple, target: Target) -> s_tir.Schedule | None:
        """GEMMs with a short float reduction (K <= ``SMALL_K``: RWKV-6/7's LoRA up-projections,
        K = 32..160): vectorised along n instead of k. The lane sums that the k-vectorised form
        ends every output with cost more than its K / lanes FMAs there. Each task copies its
        columns of W into a (n // C, k, n % C) block, so that for each k a tile's C = V * lanes
        weights are contiguous, and every x[m, k] is broadcast against them: rows x V vector
        accumulators in registers, no lane sums."""
        main_rv, pattern, ext, n, k, m_ext = found
        lanes = simd_lanes(target)
        rows = 4
        # rows*V accumulators + V W vectors + one x broadcast, as choose_tile's bound
        V = _largest_divisor(n // lanes, (simd_registers(lanes) - 1) // (rows + 1))
        C = V * lanes
        row_iter = pattern.m_iters[-1]
        copies = []
        if m_ext[-1] is None or m_ext[-1] % rows:
            copies = self._pad_rows(sch, main_rv, row_iter, rows, len(ext))
        wcopy = _weight_copy(sch, main_rv)
        tail, widened = _around_the_matmul(sch, main_rv, copies, wcopy, lanes)
        loops = sch.get_loops(main_rv)
        sch.reorder(*[loops[i] for i in pattern.m_iters], loops[pattern.n_iter], loops[pattern.k_iter])
        *outer, row, col, kk = sch.get_loops(main_rv)
        col_tiles = n // C
        per_task = _largest_divisor(col_tiles, max(1, min(self.block_bytes // (C * k * 4), col_tiles // MIN_TASKS)))
        col_oo, col_oi, col_v, col_l = sch.split(col, [None, per_task, V, lanes])
        row_o, row_i = sch.split(row, [None, rows])
        sch.reorder(*outer, col_oo, row_o, col_oi, kk, row_i, col_v, col_l)
        par = sch.fuse(*outer, col_oo) if outer else col_oo
        sch.compute_at(wcopy, par)
        sch.transform_layout(wcopy, ("write", 0), lambda n_, k_: (n_ // C, k_, n_ % C))
        acc = sch.cache_write(main_rv, 0, "local")
        sch.reverse_compute_at(acc, col_oi)
        sch.vectorize(sch.split(sch.get_loops(acc)[-1], [None, lanes])[1])
        sch.unroll(row_i)
        sch.unroll(col_v)
        sch.vectorize(col_l)
        sch.parallel(par)
        _epilogue_at(sch, tail, par, lanes)
        sch.decompose_reduction(main_rv, kk)
        return _without_round_trips(sch, widened) if widened else sch

    def _apply(self, sch: s_tir.Schedule, found: tuple, target: Target,
               direct_w: bool = False, one_row: bool = False) -> s_tir.Schedule | None:
        """``one_row``: the schedule of a single token row, for a symbolic count known at run time
        to be 1 (``_two_forms``)."""
        main_rv, pattern, ext, n, k, m_ext = found
        tile = self.tile or choose_tile(1 if one_row else None if None in m_ext else math.prod(m_ext), n, k, target)
        if tile is None or n % tile.cols or k % tile.lanes:
            return None

        # Row tile: the innermost m iter; other m iters (a unit batch dim) stay outer loops.
        # Padding comes first, while every read is still a plain buffer[i, k] (pad_einsum's
        # requirement; an inlined dequantize reads q[n, k // 8]).
        row_iter = pattern.m_iters[-1] if pattern.m_iters else None
        row_ext = m_ext[-1] if pattern.m_iters else 1
        rows = tile.rows if row_ext is None else min(tile.rows, row_ext)
        copies = []
        if row_iter is not None and rows > 1 and (row_ext is None or row_ext % rows):
            copies = self._pad_rows(sch, main_rv, row_iter, rows, len(ext))
        # Prologues go into the x loads (or the x copies; a dequantize into the W loads), the
        # padded output's writeback and epilogue chains into their last block (the first block
        # after a reduction cannot be inlined: it stays, and is computed per tile below).
        # A dequantize producer (group-quantized W, rows > 1) stays a block: it is computed once
        # per task into a fp32 scratch block of W rows that every row tile then reuses. Inlined,
        # it would unpack each weight again for every 4 tokens.
        deq = _dequantize_producer(sch, main_rv) if row_iter is not None and not direct_w else None
        if row_iter is not None and deq is None and k >= MIN_COPY_K and not direct_w:
            deq = _weight_copy(sch, main_rv)
        tail, widened = _around_the_matmul(sch, main_rv, copies, deq, tile.lanes)

        loops = sch.get_loops(main_rv)
        sch.reorder(*[loops[i] for i in pattern.m_iters], loops[pattern.n_iter], loops[pattern.k_iter])
        ko, ki = sch.split(loops[pattern.k_iter], [None, tile.lanes])
        out_ndim = len(sch.get(main_rv).writes[0].region)
        rf = sch.rfactor(ki, factor_axis=out_ndim)  # accumulators (..m.., n, lane): lanes contiguous
        *outer, col, ko, ki = sch.get_loops(rf)
        row = outer.pop() if row_iter is not None else None
        col_tiles = n // tile.cols
        per_task = _largest_divisor(col_tiles, max(1, self.block_bytes // (tile.cols * k * 4)))
        if row is not None and deq is not None:
            per_task = _largest_divisor(col_tiles, max(1, min(per_task, col_tiles // MIN_TASKS)))
        col_oo, col_oi, col_i = sch.split(col, [None, per_task, tile.cols])
        prefetch = None
        if row is not None and deq is not None:
            # tasks = blocks of W rows; the token tiles run serially inside, over the hot block
            row_o, row_i = sch.split(row, [None, rows])
            sch.reorder(*outer, col_oo, row_o, col_oi, ko, row_i, col_i, ki)
            par = sch.fuse(*outer, col_oo) if outer else col_oo
            sch.unroll(row_i)
            sch.compute_at(deq, par)
            *_, deq_k = sch.get_loops(deq)
            if k % tile.lanes == 0:
                sch.vectorize(sch.split(deq_k, [None, tile.lanes])[1])
            # packed by register tile: the tile's W vectors of one k step are adjacent, so the
            # FMA loop reads one stream instead of `cols` rows (RWKV-7 q0f32 prefill +3.6%)
            c, ln = tile.cols, tile.lanes
            sch.transform_layout(deq, ("write", 0), lambda n_, k_: (n_ // c, k_ // ln, n_ % c, k_ % ln))
        elif row is not None:
            row_o, row_i = sch.split(row, [None, rows])
            sch.reorder(*outer, col_oo, row_o, col_oi, ko, row_i, col_i, ki)
            par = sch.fuse(*outer, col_oo, row_o)
            sch.unroll(row_i)
        else:
            sch.reorder(*outer, col_oo, col_oi, ko, col_i, ki)
            par = sch.fuse(*outer, col_oo) if outer else col_oo
            if not outer:  # the parallel loop is the column-block index the prefetch address uses
                prefetch = (_weight_buffer(sch.get(rf)), sch.get(ko).loop_var,
                            sch.get(col_oi).loop_var, sch.get(par).loop_var, per_task)
        sch.parallel(par)
        sch.unroll(col_i)
        sch.vectorize(ki)
        sch.set_scope(rf, 0, "local")
        # the lane sums, the padded-output writeback and the epilogue run per task, on hot outputs
        sch.reverse_compute_at(main_rv, col_oi)
        lane_loop = _shuffled_lane_sum_loop(sch, main_rv, col_oi) if row_iter is not None else None
        # a GEMM's epilogue runs per task, over rows x (per_task * cols) outputs; a GEMV's per tile
        if row is not None:
            _epilogue_at(sch, tail, par, tile.lanes)
        else:
            _epilogue_at(sch, tail, col_oi, None)
        sch.decompose_reduction(rf, ko)
        if prefetch is not None:
            return _with_prefetch(sch, *prefetch, tile)
        if lane_loop is not None:
            sch = _with_shuffled_lane_sums(sch, lane_loop, tile.lanes)
        return _without_round_trips(sch, widened) if widened else sch

    @staticmethod
    def _pad_rows(sch: s_tir.Schedule, main_rv, row_iter: int, rows: int, n_iters: int) -> list:
        """Pad the row count to a multiple of ``rows`` (symbolic T, or T % rows != 0).

        pad_einsum adds a zero-padded copy of each x input (returned) and a writeback of the
        padded output (inlined into the epilogue when there is one, else computed per tile)."""
        old = {sch.get(b).name_hint for b in sch.get_producers(main_rv)}
        sch.pad_einsum(main_rv, [rows if i == row_iter else 1 for i in range(n_iters)])
        return [b for b in sch.get_producers(main_rv) if sch.get(b).name_hint not in old]


def _one_row_form_applies(sch: s_tir.Schedule, found: tuple) -> bool:
    """Whether the matched matmul has a symbolic token count and a W block (a dequantize
    producer, or a float W of K >= MIN_COPY_K that the many-rows form copies)."""
    main_rv, pattern, _, _, k, m_ext = found
    if not pattern.m_iters or m_ext[-1] is not None:
        return False
    return _dequantize_producer(sch, main_rv) is not None or (
        k >= MIN_COPY_K and _float_weight(sch.get(main_rv)) is not None)


def _row_count(found: tuple):
    """The matmul's token count (the product of its output-row extents) as an expression."""
    _, pattern, ext, *_ = found
    rows = ext[pattern.m_iters[0]]
    for i in pattern.m_iters[1:]:
        rows = rows * ext[i]
    return rows


def _suffixed(func: tirx.PrimFunc, suffix: str) -> tirx.PrimFunc:
    """``func`` with ``suffix`` on the name of every block but the root (block names must stay
    unique when two schedules of one function are joined)."""
    def on_block(block):
        if block.name_hint == "root":
            return block
        return s_tir.SBlock(block.iter_vars, block.reads, block.writes, block.name_hint + suffix, block.body,
                            block.init, block.alloc_buffers, block.match_buffers, block.annotations)
    return func.with_body(_rewrite(func.body, on_block=on_block))


def _branch(cond, then_func: tirx.PrimFunc, else_func: tirx.PrimFunc) -> s_tir.Schedule:
    """One function running ``then_func``'s body when ``cond`` holds, else ``else_func``'s: two
    schedules of the same function (same parameters), under one root block."""
    a, b = then_func.body.block, else_func.body.block
    root = s_tir.SBlock(a.iter_vars, a.reads, a.writes, a.name_hint, tirx.IfThenElse(cond, a.body, b.body), a.init,
                        list(a.alloc_buffers) + list(b.alloc_buffers), a.match_buffers, a.annotations)
    func = then_func.with_body(s_tir.SBlockRealize(then_func.body.iter_values, then_func.body.predicate, root))
    # a Let both schedules inherited (fast_math's sigmoid) is now defined twice: rename
    return s_tir.Schedule(tirx.transform.ConvertSSA()(tvm.IRModule({"main": func}))["main"])


def _shuffled_lane_sum_loop(sch: s_tir.Schedule, main_rv, tile_loop):
    """Prepare the lane sum ``out = sum(acc[.., 0:lanes])`` (the rfactor's main block, computed at
    ``tile_loop``) for :func:`_with_shuffled_lane_sums`: its init split off, its lane loop innermost
    and the tile's row / column loops unrolled. Returns the lane loop's variable."""
    loops = sch.get_loops(main_rv)
    depth = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(tile_loop)))
    inner = loops[depth + 1:]
    realize = _realize_of(sch.mod["main"].body, sch.get(main_rv).name_hint)
    lane_var = next(v for iv, v in zip(realize.block.iter_vars, realize.iter_values)
                    if iv.iter_type == tirx.IterVar.CommReduce)
    lane = next(lp for lp in inner if sch.get(lp).loop_var.same_as(lane_var))
    others = [lp for lp in inner if not sch.get(lp).same_as(sch.get(lane))]
    sch.reorder(*others, lane)
    sch.decompose_reduction(main_rv, lane)
    for loop in others:
        sch.unroll(loop)
    return sch.get(lane).loop_var


def _with_shuffled_lane_sums(sch: s_tir.Schedule, lane_var, lanes: int) -> s_tir.Schedule:
    """Each tile output's lane sum as one vector expression: the accumulator read whole, then
    halved (lanes j and j + half added: 16 -> 8 -> 4 -> 2 -> 1) by vector shuffles, which LLVM
    emits as an extract and an add per step on the register. Scheduled as TIR blocks, the halving
    steps went through memory, and LLVM forwarded those stores into lane-by-lane extracts and
    inserts: ~20 instructions an output, a third of a 4 x 6 tile's instructions at K = 768 (RWKV-7
    0.1B q0f16 prefill: the FFN key GEMM 163 -> 153 ms, the 768 x 768 ones -10%, same run). The
    same additions in the same order, so the forms that share this schedule stay bit-identical."""

    def fold(loop):
        realize = loop.body
        block = realize.block
        at = next(i for i, v in enumerate(realize.iter_values) if v.same_as(loop.loop_var))
        lane = block.iter_vars[at].var
        store = block.body  # out[..] = out[..] + acc[.., lane]
        acc = store.value.b
        if not (isinstance(store.value, tirx.Add) and isinstance(acc, TensorLoad) and acc.indices[-1].same_as(lane)):
            raise ValueError(f"unexpected lane sum {store}")
        ity = str(block.iter_vars[at].dom.extent.ty)
        whole = tirx.Ramp(tirx.IntImm(ity, 0), tirx.IntImm(ity, 1), lanes)
        value = tirx.BufferLoad(acc.source, [*acc.indices[:-1], whole])
        n = lanes
        while n > 1:
            half = n // 2
            value = (tirx.Shuffle([value], [tirx.IntImm("int32", j) for j in range(half)])
                     + tirx.Shuffle([value], [tirx.IntImm("int32", j) for j in range(half, n)]))
            n = half
        reads = [tirx.BufferRegion(r.source, [*r.region[:-1], tvm.ir.Range.from_min_extent(
            tirx.IntImm(ity, 0), tirx.IntImm(ity, lanes))]) if r.source.same_as(acc.source) else r
            for r in block.reads]
        keep = [i for i in range(len(block.iter_vars)) if i != at]
        folded = s_tir.SBlock([block.iter_vars[i] for i in keep], reads, block.writes, block.name_hint,
                              tirx.BufferStore(store.buffer, store.value.a + value, store.indices), None,
                              block.alloc_buffers, block.match_buffers, block.annotations)
        return s_tir.SBlockRealize([realize.iter_values[i] for i in keep], realize.predicate, folded)

    func = sch.mod["main"]
    return s_tir.Schedule(func.with_body(_rewrite(func.body, on_for=lambda loop: (
        fold(loop) if loop.loop_var.same_as(lane_var) else None))))


def _realize_of(stmt, name: str):
    """The SBlockRealize of the block called ``name`` under ``stmt`` (None if there is none)."""
    if isinstance(stmt, s_tir.SBlockRealize):
        return stmt if stmt.block.name_hint == name else _realize_of(stmt.block.body, name)
    if isinstance(stmt, tirx.For):
        return _realize_of(stmt.body, name)
    if isinstance(stmt, tirx.SeqStmt):
        return next((r for r in (_realize_of(x, name) for x in stmt.seq) if r is not None), None)
    return None


# A one-row GEMV reads each weight once, straight from DRAM, ``cols`` rows at a time. The hardware
# prefetcher follows those short row streams poorly: cold (weights 10x the L3), fp16 rows of 768
# read at 16-18 GB/s against the 34 GB/s a plain sequential read gets. Prefetching, line by
# line as the k loop advances, the row tile PREFETCH_TILES ahead (contiguous: rows are) into L2
# lifts them to ~29 GB/s, and fp32's 24-32 to ~30 (tools/bench_matmul.py); into L1
# (prefetcht0) gains less (fp16 25), and a non-temporal one is 2.5x slower.
PREFETCH_TILES = 2
PREFETCH_LOCALITY = 2  # llvm.prefetch locality: 2 = prefetcht1 (L2)
LINE_BYTES = 64


def _weight_buffer(block) -> tirx.Buffer | None:
    """The float W[n, k] the reduction block reads (None for anything else)."""
    for read in block.reads:
        buf = read.source
        if len(buf.shape) == 2 and "float" in buf.dtype and len(read.region) == 2:
            idx0 = read.region[0].min
            if not isinstance(idx0, tirx.IntImm) and all(_const(d) is not None for d in buf.shape):
                return buf
    return None


def _with_prefetch(sch: s_tir.Schedule, w: tirx.Buffer | None, ko_var, col_oi_var, par_var, per_task: int,
                   tile: Tile) -> s_tir.Schedule:
    """The scheduled GEMV with, at the top of each k step, prefetches of the lines of the row tile
    ``PREFETCH_TILES`` ahead that this step's position corresponds to (0: none)."""
    if w is None or PREFETCH_TILES == 0:
        return sch
    n, k = (int(d) for d in w.shape)
    eb = {"float16": 2, "bfloat16": 2, "float32": 4}.get(str(w.dtype))
    if eb is None:
        return sch
    step_bytes = tile.cols * tile.lanes * eb
    if step_bytes % LINE_BYTES:
        return sch
    per_line = LINE_BYTES // eb
    tile_elems = tile.cols * k
    last = n * k - 1
    i64 = "int64"

    def prefetch_lines():
        tile_idx = tirx.Cast(i64, par_var) * per_task + tirx.Cast(i64, col_oi_var) + PREFETCH_TILES
        stmts = []
        for j in range(step_bytes // LINE_BYTES):
            flat = tile_idx * tile_elems + tirx.Cast(i64, ko_var) * (tile.cols * tile.lanes) + j * per_line
            flat = tirx.min(flat, tirx.IntImm(i64, last))
            addr = tirx.address_of(tirx.BufferLoad(w, [tirx.floordiv(flat, k), tirx.floormod(flat, k)]))
            stmts.append(tirx.Evaluate(tirx.call_llvm_intrin("void", "llvm.prefetch.p0", addr, tirx.IntImm("int32", 0),
                                                             tirx.IntImm("int32", PREFETCH_LOCALITY),
                                                             tirx.IntImm("int32", 1))))
        return stmts

    func = sch.mod["main"]
    return s_tir.Schedule(func.with_body(_at_top_of_loop(func.body, ko_var, prefetch_lines)))


def _at_top_of_loop(stmt, loop_var, make):
    """``stmt`` with ``make()``'s statements put first in the body of the loop over ``loop_var``."""
    return _rewrite(stmt, on_loop=lambda loop, body: (tirx.SeqStmt([*make(), body])
                                                      if loop.loop_var.same_as(loop_var) else body))


def _rewrite(stmt, on_loop=None, on_block=None, on_for=None):
    """``stmt`` with every loop body passed through ``on_loop(loop, body)``, every block through
    ``on_block(block)``, and every loop for which ``on_for(loop)`` returns a statement replaced by
    it (this TVM exposes no Python IR mutator; only the nodes on the way to a change are rebuilt)."""
    if isinstance(stmt, tirx.For):
        new = on_for(stmt) if on_for else None
        if new is not None:
            return new
        body = _rewrite(stmt.body, on_loop, on_block, on_for)
        body = on_loop(stmt, body) if on_loop else body
        if body.same_as(stmt.body):
            return stmt
        return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, body, stmt.thread_binding,
                        stmt.annotations, stmt.step)
    if isinstance(stmt, tirx.SeqStmt):
        seq = [_rewrite(s, on_loop, on_block, on_for) for s in stmt.seq]
        return stmt if all(a.same_as(b) for a, b in zip(seq, stmt.seq)) else tirx.SeqStmt(seq)
    if isinstance(stmt, s_tir.SBlockRealize):
        block = _rewrite(stmt.block, on_loop, on_block, on_for)
        return stmt if block.same_as(stmt.block) else s_tir.SBlockRealize(stmt.iter_values, stmt.predicate, block)
    if isinstance(stmt, s_tir.SBlock):
        body = _rewrite(stmt.body, on_loop, on_block, on_for)
        if not body.same_as(stmt.body):
            stmt = s_tir.SBlock(stmt.iter_vars, stmt.reads, stmt.writes, stmt.name_hint, body, stmt.init,
                                stmt.alloc_buffers, stmt.match_buffers, stmt.annotations)
        return on_block(stmt) if on_block else stmt
    return stmt


def _without_round_trips(sch: s_tir.Schedule, names: set) -> s_tir.Schedule:
    """``unsafe_set_dtype`` keeps a widened copy exact by reading it back as
    ``float32(float16(copy[i]))``; the copies named in ``names`` were widened from fp16 values,
    so that round trip is the identity: drop it from the reduction's update."""

    def strip(e):
        if (isinstance(e, tirx.Cast) and isinstance(e.value, tirx.Cast) and isinstance(e.value.value, TensorLoad)
                and e.value.value.source.name in names and str(e.ty) == str(e.value.value.source.dtype)):
            return e.value.value
        for op in (tirx.Add, tirx.Mul):
            if isinstance(e, op):
                return op(strip(e.a), strip(e.b))
        return e

    def on_block(block):
        store = block.body
        if not (block.name_hint.endswith("_rf_update") and isinstance(store, tirx.BufferStore)):
            return block
        store = tirx.BufferStore(store.buffer, strip(store.value), store.indices)
        return s_tir.SBlock(block.iter_vars, block.reads, block.writes, block.name_hint, store, block.init,
                            block.alloc_buffers, block.match_buffers, block.annotations)

    func = sch.mod["main"]
    return s_tir.Schedule(func.with_body(_rewrite(func.body, on_block=on_block)))


# The copied or dequantized W block is the only parallel axis of its matmul: keep at least
# MIN_TASKS blocks (a 64-wide LoRA factor fits one 256 KiB block: one core). Below MIN_COPY_K the
# per-task copy costs more than it saves (RWKV-7's LoRA up-projections, K = 64).
MIN_TASKS = 16
MIN_COPY_K = 256
SMALL_K = 160  # up to here a GEMM vectorises along n (NTMatmulCPU._apply_small_k)


def _float_weight(block) -> tirx.Buffer | None:
    """The W the reduction reads when it is a float buffer (not packed codes), else None."""
    w = _weight_buffer(block)
    return w if w is not None and w.dtype in ("float16", "bfloat16", "float32") else None


def _weight_copy(sch: s_tir.Schedule, main_rv):
    """A copy of the float W the reduction reads (a producer block, or None)."""
    block = sch.get(main_rv)
    w = _float_weight(block)
    if w is None:
        return None
    idx = next(i for i, r in enumerate(block.reads) if r.source.same_as(w))
    return sch.cache_read(main_rv, idx, "global")


def _widen_to_fp32(sch: s_tir.Schedule, block) -> set:
    """Store the fp16/bf16 buffer ``block`` writes as fp32; {its name} if it was widened, else {}
    (a dequantize block already writes fp32)."""
    if sch.get(block).writes[0].source.dtype not in ("float16", "bfloat16"):
        return set()
    sch.unsafe_set_dtype(block, 0, "float32")
    return {sch.get(block).writes[0].source.name}


def _dequantize_producer(sch: s_tir.Schedule, main_rv):
    """The spatial block that feeds the matmul dequantized weights (it reads a uint32 buffer)."""
    for block in sch.get_producers(main_rv):
        stmt = sch.get(block)
        if any(r.source.dtype == "uint32" for r in stmt.reads) and all(
                iv.iter_type == tirx.IterVar.DataPar for iv in stmt.iter_vars):
            return block
    return None


def _inline_spatial(sch: s_tir.Schedule, keep: set) -> None:
    """compute_inline / reverse_compute_inline every root block not named in ``keep`` until
    nothing more goes (dlight's try_inline, on the live block list)."""
    progress = True
    while progress:
        progress = False
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            if sch.get(block).name_hint in keep:
                continue
            for inline in (sch.compute_inline, sch.reverse_compute_inline):
                try:
                    inline(block)
                except RuntimeError:
                    continue
                progress = True
                break
            if progress:
                break


def _around_the_matmul(sch: s_tir.Schedule, main_rv, copies: list, w_block, lanes: int) -> tuple[list, set]:
    """The blocks around the reduction, as both forms want them: the padded x copies and the W
    block (a copy or a dequantize, or None) stay blocks, fp16 ones stored as fp32; every other
    spatial block is inlined (prologues into the x loads, the padded output's writeback into its
    epilogue); the x copies run parallel and vectorised. Returns (the consumers left after the
    reduction, in dataflow order; the names of the widened buffers, for _without_round_trips)."""
    stay = copies + ([w_block] if w_block is not None else [])
    widened = set()
    for block in stay:
        widened |= _widen_to_fp32(sch, block)
    _inline_spatial(sch, {sch.get(b).name_hint for b in [main_rv, *stay]})
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    names = [sch.get(b).name_hint for b in blocks]
    tail = blocks[names.index(sch.get(main_rv).name_hint) + 1:]
    for copy in copies:
        _parallel_vectorized(sch, copy, lanes)
    return tail, widened


def _epilogue_at(sch: s_tir.Schedule, tail: list, loop, lanes: int | None) -> None:
    """Compute the epilogue blocks ``tail`` under ``loop``, while their inputs are hot; with
    ``lanes``, their last axis vectorised (a GEMM's task covers whole rows of outputs, so
    fast_math's exp and sigmoid run 16 lanes at a time, not 24 scalars). The first block that
    cannot move (it reads other outputs) stays a whole-tensor loop, with the rest after it."""
    for blk in tail:
        try:
            sch.reverse_compute_at(blk, loop)
        except RuntimeError:
            return
        if lanes is not None:
            inner = sch.get_loops(blk)[-1]
            ext = _const(sch.get(inner).extent)
            if ext is not None and ext % lanes == 0:
                sch.vectorize(sch.split(inner, [None, lanes])[1])


def schedule_matmuls(tile: Tile | None = None):
    """The schedule pass alone (needs a target in scope: ``with target:``)."""
    return dl.ApplyDefaultSchedule(NTMatmulCPU(tile))


def _parallel_vectorized(sch: s_tir.Schedule, block, lanes: int) -> None:
    """An elementwise copy: outer loops fused and parallel, the inner loop vectorised."""
    *outer, inner = sch.get_loops(block)
    inner_ext = _const(sch.get(inner).extent)
    if outer and inner_ext is not None and inner_ext % lanes == 0:
        sch.vectorize(sch.split(inner, [None, lanes])[1])
    if outer:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
