"""The llvm form of the channel-mix value product: rows of W visited only where the activation is
nonzero (see the package docstring).

Two stages, both parallel:
1. per tile of 4 tokens (and a 1-token tile per leftover token, so a decode step does no padded
   FMAs), the ascending list of hidden units f with any nonzero x[t, f]: a union over the tile's
   tokens, so that one weight load serves them all; ascending, so the summation order does not
   depend on threads. Decode and batches build each chunk's part of it in the task that reads
   its rows (``_chunk_list``), prefill the whole list per tile (``_tile_lists``);
2. the products over the listed rows only, summed per chunk of the hidden axis (a chunking fixed by
   F alone), the chunk partials then summed in chunk order, on every path, so that a row's result
   does not depend on the rows beside it (batching and prompt splitting never change a token):
   * up to ``PANEL_MIN_ROWS`` tokens (decode, batches), one task per (token tile, chunk), whole
     rows of W (contiguous, streamed, the next rows prefetched: the hardware prefetcher cannot
     follow an index list) into a partial row per chunk, then a reduction over the chunks;
   * from ``PANEL_MIN_ROWS`` tokens on (prefill), one task per column tile, which first packs its
     column panel of W into a contiguous fp32 scratch (rows of W are C apart: swept in place for
     every token tile, each listed row costs a TLB miss) and then runs every token tile over it
     with the chunk partials in registers.
Quantized weights (``cpu_quant.py``) take the same stage 1 and their own stage 2. A chunk with no
listed row adds nothing to its rows' sums, on every path.
"""
from __future__ import annotations

from tvm.script import tirx as T

LANES = 8  # fp32 lanes per vector (ymm); LLVM keeps AVX-512 hosts at 256-bit too
TILE_ROWS = 4
PREFETCH = 8  # list entries ahead (each ~2-4 cache lines per task)
PANEL_MIN_ROWS = 16  # from this many tokens on, each task packs its column panel first
MAX_CHUNKS = 16  # of the hidden axis: parallel decode tasks per token tile
ROW_AHEAD = 2  # decode: whole rows of W prefetched this many list entries ahead


def _largest_divisor(n: int, at_most: int) -> int:
    return next(d for d in range(min(n, at_most), 0, -1) if n % d == 0)


def _nonzero(v, act_dtype: str):
    """``v != 0`` as any bit but the sign: NaN counts (it must propagate as in the dense product)
    whatever fast-math assumes, -0.0 does not."""
    bits = {"float32": "uint32", "float16": "uint16"}[act_dtype]
    magnitude = {"float32": 0x7FFFFFFF, "float16": 0x7FFF}[act_dtype]
    return T.bitwise_and(T.reinterpret(bits, v), T.Cast(bits, magnitude)) != T.Cast(bits, 0)


def _nonzero_lists(F: int, act_dtype: str, chunk: int):
    """Macro: ``idx[tile, :cst[tile, n_chunks]]`` = the f with any nonzero ``x[t, f]`` over the
    tile's rows ``[row0, row0 + nrows)``, ascending (the order fixes the summation order: results
    do not depend on threads); ``cst[tile, k]`` = where chunk k's f (``f // chunk == k``) start."""
    n_chunks = (F + chunk - 1) // chunk

    @T.macro
    def lists(x, idx, cst, pos, tile, row0, nrows):
        pos[0] = 0
        for f in range(F):
            if f % chunk == 0:
                cst[tile, f // chunk] = pos[0]
            hit = T.alloc_buffer((1,), "int32", scope="global")
            hit[0] = 0
            for r in range(nrows):
                if _nonzero(x[row0 + r, f], act_dtype):
                    hit[0] = 1
            if hit[0] == 1:
                idx[tile, pos[0]] = f
                pos[0] = pos[0] + 1
        cst[tile, n_chunks] = pos[0]

    return lists


def _chunk_list(F: int, chunk: int, act_dtype: str, nrows: int):
    """Macro ``(x, lst, n, row0, k)``: ``lst[:n[0]]`` = the f of chunk k (``f // chunk == k``) with
    any nonzero ``x[row0 + r, f]``, ``r < nrows``, ascending: chunk k's part of
    :func:`_nonzero_lists`, built by the task that uses it (decode: one list of all F on one core
    cost more than reading the rows at 90% zeros)."""
    @T.macro
    def build(x, lst, n, row0, k):
        hit = T.alloc_buffer((1,), "int32", scope="global")
        n[0] = 0
        for e in range(T.min(chunk, F - k * chunk)):
            hit[0] = 0
            for r in T.unroll(nrows):
                if _nonzero(x[row0 + r, k * chunk + e], act_dtype):
                    hit[0] = 1
            if hit[0] == 1:
                lst[n[0]] = k * chunk + e
                n[0] = n[0] + 1

    return build


def _tile_lists(F: int, act_dtype: str, chunk: int):
    """Macro ``(x, idx, cst, seq_len)``: :func:`_nonzero_lists` for every token tile (4-row tiles,
    then a 1-row tile per leftover token), in parallel."""
    lists = _nonzero_lists(F, act_dtype, chunk)
    R = TILE_ROWS

    @T.macro
    def all_tiles(x, idx, cst, seq_len):
        for tile in T.parallel(seq_len // R + seq_len % R):
            pos = T.alloc_buffer((1,), "int32", scope="global")
            if tile < seq_len // R:
                lists(x, idx, cst, pos, tile, tile * R, R)
            else:
                lists(x, idx, cst, pos, tile, seq_len // R * R + (tile - seq_len // R), 1)

    return all_tiles


def _tile_of(t, seq_len):
    """The token tile of row t: 4-row tiles first, then one 1-row tile per leftover row."""
    R = TILE_ROWS
    return T.min(t // R, seq_len // R) + T.max(t - seq_len // R * R, 0) * T.Cast("int64", t >= seq_len // R * R)


def _row_in_tile(t, seq_len):
    return T.if_then_else(t < seq_len // TILE_ROWS * TILE_ROWS, t % TILE_ROWS, 0)


def _prefetch(buf, row, col):
    return T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(buf[row, col]),
                                         T.int32(0), T.int32(3), T.int32(1)))


def n_chunks_of(F: int) -> tuple[int, int]:
    """(chunk size, chunk count) of the hidden axis: fixed by F alone, so that every path sums a
    row's products in the same groups (chunk partial sums, then the partials in chunk order)."""
    n = max(1, min(MAX_CHUNKS, F // 128))
    size = (F + n - 1) // n
    return size, (F + size - 1) // size


def ffn_value_cpu(F: int, C: int, act_dtype: str, w_dtype: str, out_dtype: str):
    """``y (seq_len, C) = x (seq_len, F) @ w (F, C)``, skipping zero x entries."""
    L = LANES
    CV = _largest_divisor(C // L, 4)  # vectors per column tile: rows * CV accumulators <= 16
    CT = CV * L
    CTN = C // CT
    R = TILE_ROWS
    FC, NCH = n_chunks_of(F)
    tile_lists = _tile_lists(F, act_dtype, FC)
    w_bytes = 4 if w_dtype == "float32" else 2

    def chunk_rows(nrows: int):
        # decode / batches: one task per (token tile, chunk of f), its chunk's nonzero list, then
        # whole rows of W (contiguous, C wide: streamed, unlike column segments of rows C apart)
        # into a partial sum per chunk
        chunk_list = _chunk_list(F, FC, act_dtype, nrows)

        @T.macro
        def body(x, w, part, listed, tile, row0, k):
            lst = T.alloc_buffer((FC,), "int32", scope="global")
            n = T.alloc_buffer((1,), "int32", scope="global")
            chunk_list(x, lst, n, row0, k)
            listed[tile, k] = n[0]
            if n[0] > 0:
                for r in T.unroll(nrows):
                    for cv in range(C // L):
                        for lane in T.vectorized(L):
                            part[tile, k, r, cv * L + lane] = T.float32(0)
                for j in range(n[0]):
                    f = lst[j]
                    for cv in range(C // L):
                        # the row ROW_AHEAD list entries on, one cache line per 64 bytes of this row
                        if cv % (64 // (L * w_bytes)) == 0:
                            _prefetch(w, lst[T.min(j + ROW_AHEAD, n[0] - 1)], cv * L)
                        for r in T.unroll(nrows):
                            for lane in T.vectorized(L):
                                part[tile, k, r, cv * L + lane] = part[tile, k, r, cv * L + lane] + T.Cast(
                                    "float32", x[row0 + r, f]) * T.Cast("float32", w[f, cv * L + lane])
        return body

    def panel_rows(nrows: int):
        # prefill: the same chunk partials, from the task's packed column panel, in registers
        @T.macro
        def body(x, pan, y, idx, cst, tile, row0, ct):
            acc = T.alloc_buffer((nrows, CV, L), "float32", scope="global")
            tot = T.alloc_buffer((nrows, CV, L), "float32", scope="global")
            for r in T.unroll(nrows):
                for v in T.unroll(CV):
                    for lane in T.vectorized(L):
                        tot[r, v, lane] = T.float32(0)
            for k in range(NCH):
                for r in T.unroll(nrows):
                    for v in T.unroll(CV):
                        for lane in T.vectorized(L):
                            acc[r, v, lane] = T.float32(0)
                for j in range(cst[tile, k], cst[tile, k + 1]):
                    f = idx[tile, j]
                    for r in T.unroll(nrows):
                        for v in T.unroll(CV):
                            for lane in T.vectorized(L):
                                acc[r, v, lane] = acc[r, v, lane] + T.Cast("float32", x[row0 + r, f]) * pan[
                                    f, v * L + lane]
                if cst[tile, k + 1] > cst[tile, k]:  # empty chunks add nothing, on both paths
                    for r in T.unroll(nrows):
                        for v in T.unroll(CV):
                            for lane in T.vectorized(L):
                                tot[r, v, lane] = tot[r, v, lane] + acc[r, v, lane]
            for r in T.unroll(nrows):
                for v in T.unroll(CV):
                    for lane in T.vectorized(L):
                        y[row0 + r, ct * CT + v * L + lane] = T.Cast(out_dtype, tot[r, v, lane])
        return body

    one, four = chunk_rows(1), chunk_rows(R)
    one_p, four_p = panel_rows(1), panel_rows(R)

    @T.prim_func(private=True)
    def ffn_value(var_x: T.handle, w: T.Buffer((T.int64(F), T.int64(C)), w_dtype), var_y: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        seq_len = T.int64()
        x = T.match_buffer(var_x, (seq_len, T.int64(F)), act_dtype)
        y = T.match_buffer(var_y, (seq_len, T.int64(C)), out_dtype)
        if seq_len >= PANEL_MIN_ROWS:
            idx = T.alloc_buffer((seq_len // R + seq_len % R, T.int64(F)), "int32")
            cst = T.alloc_buffer((seq_len // R + seq_len % R, NCH + 1), "int32")
            tile_lists(x, idx, cst, seq_len)
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
                        four_p(x, pan, y, idx, cst, tile, tile * R, ct)
                    else:
                        one_p(x, pan, y, idx, cst, tile, seq_len // R * R + (tile - seq_len // R), ct)
        else:
            part = T.alloc_buffer((seq_len // R + seq_len % R, NCH, R, T.int64(C)), "float32")
            listed = T.alloc_buffer((seq_len // R + seq_len % R, NCH), "int32")
            for task in T.parallel((seq_len // R + seq_len % R) * NCH):
                tile = task // NCH
                k = task % NCH
                if tile < seq_len // R:
                    four(x, w, part, listed, tile, tile * R, k)
                else:
                    one(x, w, part, listed, tile, seq_len // R * R + (tile - seq_len // R), k)
            # the chunk partials, summed in chunk order (as the panel path does)
            for t in T.parallel(seq_len):
                tot = T.alloc_buffer((T.int64(L),), "float32", scope="global")
                for cv in range(C // L):
                    for lane in T.vectorized(L):
                        tot[lane] = T.float32(0)
                    for k in range(NCH):
                        if listed[_tile_of(t, seq_len), k] > 0:
                            for lane in T.vectorized(L):
                                tot[lane] = tot[lane] + part[_tile_of(t, seq_len), k, _row_in_tile(t, seq_len),
                                                             cv * L + lane]
                    for lane in T.vectorized(L):
                        y[t, cv * L + lane] = T.Cast(out_dtype, tot[lane])

    return ffn_value
