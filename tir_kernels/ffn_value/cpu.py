"""The llvm form of the channel-mix value product: rows of W visited only where the activation is
nonzero (see the package docstring).

Two stages, both parallel:
1. per tile of 4 tokens (and a 1-token tile per leftover token, so a decode step does no padded
   FMAs), the ascending list of hidden units f with any nonzero x[t, f]: a union over the tile's
   tokens, so that one weight load serves them all; ascending, so the summation order does not
   depend on threads;
2. accumulators for ``tile rows x CT`` outputs swept over the listed rows only:
   * up to ``PANEL_MIN_ROWS`` tokens (decode, batches), one task per (token tile, column tile),
     reading W in place, each listed row's column segment one contiguous load, the row a few
     list entries ahead prefetched (the hardware prefetcher cannot follow an index list);
   * from ``PANEL_MIN_ROWS`` tokens on (prefill), one task per column tile, which first packs its
     column panel of W into a contiguous fp32 scratch (rows of W are C apart: swept in place for
     every token tile, each listed row costs a TLB miss) and then runs every token tile over it.
Quantized weights (``cpu_quant.py``) take the same stages.
"""
from __future__ import annotations

from tvm.script import tirx as T

LANES = 8  # fp32 lanes per vector (ymm); LLVM keeps AVX-512 hosts at 256-bit too
TILE_ROWS = 4
PREFETCH = 8  # list entries ahead (each ~2-4 cache lines per task)
PANEL_MIN_ROWS = 16  # from this many tokens on, each task packs its column panel first


def _largest_divisor(n: int, at_most: int) -> int:
    return next(d for d in range(min(n, at_most), 0, -1) if n % d == 0)


def _nonzero_lists(F: int, act_dtype: str):
    """Macro: ``idx[tile, :cnt[tile]]`` = the f with any nonzero ``x[t, f]`` over the tile's rows
    ``[row0, row0 + nrows)``, ascending (the order fixes the summation order: results do not
    depend on threads)."""
    bits_dtype = {"float32": "uint32", "float16": "uint16"}[act_dtype]
    magnitude = {"float32": 0x7FFFFFFF, "float16": 0x7FFF}[act_dtype]

    @T.macro
    def lists(x, idx, cnt, pos, tile, row0, nrows):
        pos[0] = 0
        for f in range(F):
            hit = T.alloc_buffer((1,), "int32", scope="global")
            hit[0] = 0
            for r in range(nrows):
                # nonzero = any bit but the sign: NaN counts (it must propagate as in the dense
                # product) whatever fast-math assumes, -0.0 does not
                if T.bitwise_and(T.reinterpret(bits_dtype, x[row0 + r, f]),
                                 T.Cast(bits_dtype, magnitude)) != T.Cast(bits_dtype, 0):
                    hit[0] = 1
            if hit[0] == 1:
                idx[tile, pos[0]] = f
                pos[0] = pos[0] + 1
        cnt[tile] = pos[0]

    return lists


def _prefetch(buf, row, col):
    return T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(buf[row, col]),
                                         T.int32(0), T.int32(3), T.int32(1)))


def ffn_value_cpu(F: int, C: int, act_dtype: str, w_dtype: str, out_dtype: str):
    """``y (seq_len, C) = x (seq_len, F) @ w (F, C)``, skipping zero x entries."""
    L = LANES
    CV = _largest_divisor(C // L, 4)  # vectors per column tile: rows * CV accumulators <= 16
    CT = CV * L
    CTN = C // CT
    R = TILE_ROWS
    nonzero_lists = _nonzero_lists(F, act_dtype)

    def tile_body(nrows: int, prefetch: bool):
        # src[f, col0 + v*L + lane]: W itself (decode: one pass), or the task's packed panel
        @T.macro
        def body(x, src, col0, y, idx, cnt, tile, row0, ct):
            acc = T.alloc_buffer((nrows, CV, L), "float32", scope="global")
            for r in T.unroll(nrows):
                for v in T.unroll(CV):
                    for lane in T.vectorized(L):
                        acc[r, v, lane] = T.float32(0)
            for j in range(cnt[tile]):
                f = idx[tile, j]
                if prefetch:
                    _prefetch(src, idx[tile, T.min(j + PREFETCH, cnt[tile] - 1)], col0)
                for r in T.unroll(nrows):
                    for v in T.unroll(CV):
                        for lane in T.vectorized(L):
                            acc[r, v, lane] = acc[r, v, lane] + T.Cast("float32", x[row0 + r, f]) * T.Cast(
                                "float32", src[f, col0 + v * L + lane])
            for r in T.unroll(nrows):
                for v in T.unroll(CV):
                    for lane in T.vectorized(L):
                        y[row0 + r, ct * CT + v * L + lane] = T.Cast(out_dtype, acc[r, v, lane])
        return body

    one, four = tile_body(1, True), tile_body(R, True)
    one_p, four_p = tile_body(1, False), tile_body(R, False)

    @T.prim_func(private=True)
    def ffn_value(var_x: T.handle, w: T.Buffer((T.int64(F), T.int64(C)), w_dtype), var_y: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        seq_len = T.int64()
        x = T.match_buffer(var_x, (seq_len, T.int64(F)), act_dtype)
        y = T.match_buffer(var_y, (seq_len, T.int64(C)), out_dtype)
        idx = T.alloc_buffer((seq_len // R + seq_len % R, T.int64(F)), "int32")
        cnt = T.alloc_buffer((seq_len // R + seq_len % R,), "int32")
        for tile in T.parallel(seq_len // R + seq_len % R):
            pos = T.alloc_buffer((1,), "int32", scope="global")
            if tile < seq_len // R:
                nonzero_lists(x, idx, cnt, pos, tile, tile * R, R)
            else:
                nonzero_lists(x, idx, cnt, pos, tile, seq_len // R * R + (tile - seq_len // R), 1)
        if seq_len >= PANEL_MIN_ROWS:
            # prefill: one task per column panel, copied (as fp32) into a contiguous scratch
            # that every token tile then sweeps from L2: W's rows are C apart, so reading the
            # panel in place costs a TLB miss per listed row, again for every token tile
            for ct in T.parallel(CTN):
                pan = T.alloc_buffer((T.int64(F), T.int64(CT)), "float32", scope="local")
                for f in range(F):
                    for v in T.unroll(CV):
                        for lane in T.vectorized(L):
                            pan[f, v * L + lane] = T.Cast("float32", w[f, ct * CT + v * L + lane])
                for tile in range(seq_len // R + seq_len % R):
                    if tile < seq_len // R:
                        four_p(x, pan, 0, y, idx, cnt, tile, tile * R, ct)
                    else:
                        one_p(x, pan, 0, y, idx, cnt, tile, seq_len // R * R + (tile - seq_len // R), ct)
        else:
            for task in T.parallel((seq_len // R + seq_len % R) * CTN):
                # column-tile major: a thread's consecutive tasks sweep the same column panel
                tile = task % (seq_len // R + seq_len % R)
                ct = task // (seq_len // R + seq_len % R)
                if tile < seq_len // R:
                    four(x, w, ct * CT, y, idx, cnt, tile, tile * R, ct)
                else:
                    one(x, w, ct * CT, y, idx, cnt, tile, seq_len // R * R + (tile - seq_len // R), ct)

    return ffn_value
