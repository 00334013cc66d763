"""The llvm form of the group-quantized value product, over the nonzero rows only.

As ``quant_matmul``'s decode GEMV, one uint32 word sits in each SIMD lane and every code of the
lanes' words costs one AND, one int->float conversion and one FMA: ``word & (mask << bits*j)`` is
``code * 2**(bits*j)``, exact in fp32, and the power of two comes off once per output at the end.
The row's scale multiplies x once per row and lane (a group spans ``group / per_word`` lanes), and
``- qmax`` is folded out: ``sum_f x_f s_f (c_f - qmax) = sum_f c_f (x_f s_f) - qmax sum_f x_f s_f``.
Lane ``l``, code ``j`` of column tile ``kb`` holds output column ``(kb * L + l) * per_word + j``.

As in the float kernel (``cpu.py``), products are summed per chunk of the hidden axis (a chunking
fixed by F alone), each chunk's partial unscaled and offset, and the partials summed in chunk
order, on every path, so that a row's result does not depend on how many tokens share the call
(the server batches sequences and splits prompts, and must get the same tokens either way):

* decode and batches (fewer than ``PANEL_MIN_ROWS`` tokens): one task per (token tile, chunk)
  walks whole rows of q (contiguous: one stream, prefetched ``ROW_AHEAD`` list entries on; the
  hardware prefetcher cannot follow an index list) into per-lane partials in L1, then one task
  per (token tile, column tile) sums the chunks. Before, a task per column tile read 32 bytes of
  every listed row, 384 bytes apart, and the step ran 0.79x the dense GEMV at 50% zeros;
* prefill: each task converts its column panel once, to the same fp32 values (``code *
  2**(bits*j)`` and the lane scales), and runs the same arithmetic over it in registers, in passes
  of 4 codes.

Decode here is compute-bound. At 4 bits, F x C = 3072 x 768 and fp16 activations it reads its
listed rows at ~9-11 GB/s on 2 cores with no zeros (115-150 / 67-93 / 26-29 / 4-6 us at 0 / 50 /
90 / 100% zeros, two runs). The dense decode GEMV costs about half as much per byte: its int16 form
(``quant_matmul``) pairs two codes of one word in a single ``vpmaddwd``, because along its
contraction axis a word's codes are summed together. Here a word's codes are eight different
outputs, and the sum runs over rows. Pairing two listed rows in the int16 halves of a lane takes
about as many shifts and masks as it saves. 512-bit vectors (L = 16) were slower: 172 against
115 us. The disassembly of the 4-row pass is a clean loop: the scales come in by
``vmovd`` / ``vpshufb`` / ``vcvtph2ps``, and the partials stay in registers across the rows.
"""
from __future__ import annotations

from tvm.script import tirx as T

from ..quant_matmul.format import qmax
from .cpu import PANEL_MIN_ROWS, TILE_ROWS, _chunk_list, _prefetch, _row_in_tile, _tile_lists, _tile_of, n_chunks_of

# decode: whole rows of q prefetched this many list entries ahead. A 4-bit row is 8x shorter than
# a fp32 one (384 bytes at C = 768): 4 and 8 ahead were alike, 2 was 5-10% slower
ROW_AHEAD = 8
ROWS_PER_PASS = 4  # decode: listed rows per pass over the partials


def ffn_value_q_cpu(F: int, C: int, bits: int, group: int, act_dtype: str, out_dtype: str):
    per_word = 32 // bits
    words = C // per_word
    L = 8 if words % 8 == 0 else 4
    CTN = words // L  # column tiles of L words = L * per_word columns
    wpg = group // per_word  # words per scale group
    last = per_word - 1
    mask = 2 ** bits - 1
    qm = float(qmax(bits))
    R = TILE_ROWS
    FC, NCH = n_chunks_of(F)
    tile_lists = _tile_lists(F, act_dtype, FC)
    line_tiles = max(1, 64 // (4 * L))  # column tiles per 64-byte line of a row of q

    def code(q, f, word, j):
        """``code_j * 2**(bits*j)`` of ``q[f, word]`` as fp32 (exact); the top code shifted down."""
        return T.Cast("float32", T.Cast("int32", T.if_then_else(
            j == last, T.shift_right(q[f, word], T.uint32(bits * last)),
            T.bitwise_and(q[f, word], T.shift_left(T.uint32(mask), T.Cast("uint32", bits * j))))))

    def chunk_value(acc, off, j):
        """A chunk's partial for code ``j``: ``2**-(bits*j)`` from its exponent bits (the top code
        was shifted down instead), less the folded ``qmax * sum x s``. One expression for both
        paths, so that both round alike."""
        return acc * T.if_then_else(j == last, T.float32(1), T.reinterpret("float32", T.shift_left(
            T.uint32(127) - T.Cast("uint32", bits * j), T.uint32(23)))) - T.float32(qm) * off

    def chunk_rows(nrows: int):
        # decode / batches: the chunk's list of nonzero f, then whole rows of q into per-lane
        # partials, U rows at a time (the partials stay in registers across them: U FMAs per load
        # and store, the same additions in the same order as one row at a time)
        U = ROWS_PER_PASS if nrows == 1 else 1
        chunk_list = _chunk_list(F, FC, act_dtype, nrows)

        def rows_pass(u_rows: int):
            @T.macro
            def body(x, q, scale, part, offp, lst, n, xs, tile, row0, k, i0):
                for kb in range(CTN):
                    if kb % line_tiles == 0:
                        for u in T.unroll(u_rows):
                            _prefetch(q, lst[T.min(i0 + u + ROW_AHEAD, n[0] - 1)], kb * L)
                    for u in T.unroll(u_rows):
                        for r in T.unroll(nrows):
                            for lane in T.vectorized(L):
                                xs[u, r, lane] = T.Cast("float32", x[row0 + r, lst[i0 + u]]) * T.Cast(
                                    "float32", scale[lst[i0 + u], (kb * L + lane) // wpg])
                    for r in T.unroll(nrows):
                        for u in T.unroll(u_rows):
                            for lane in T.vectorized(L):
                                offp[tile, k, r, kb, lane] = offp[tile, k, r, kb, lane] + xs[u, r, lane]
                    for j in T.unroll(per_word):
                        for r in T.unroll(nrows):
                            for u in T.unroll(u_rows):
                                for lane in T.vectorized(L):
                                    part[tile, k, r, kb, j, lane] = part[tile, k, r, kb, j, lane] + code(
                                        q, lst[i0 + u], kb * L + lane, j) * xs[u, r, lane]
            return body

        many, single = rows_pass(U), rows_pass(1)

        @T.macro
        def body(x, q, scale, part, offp, listed, tile, row0, k):
            lst = T.alloc_buffer((FC,), "int32", scope="global")
            n = T.alloc_buffer((1,), "int32", scope="global")
            chunk_list(x, lst, n, row0, k)
            listed[tile, k] = n[0]
            if n[0] > 0:
                xs = T.alloc_buffer((U, nrows, L), "float32", scope="global")
                for r in T.unroll(nrows):
                    for kb in range(CTN):
                        for lane in T.vectorized(L):
                            offp[tile, k, r, kb, lane] = T.float32(0)
                        for j in T.unroll(per_word):
                            for lane in T.vectorized(L):
                                part[tile, k, r, kb, j, lane] = T.float32(0)
                for ii in range(n[0] // U):
                    many(x, q, scale, part, offp, lst, n, xs, tile, row0, k, ii * U)
                for i in range(n[0] // U * U, n[0]):
                    single(x, q, scale, part, offp, lst, n, xs, tile, row0, k, i)
        return body

    def panel_rows(nrows: int):
        # prefill: the same chunk partials from the task's fp32 panel, 4 codes per pass, in registers
        JV = min(4, per_word)

        @T.macro
        def body(x, pan, psc, y, idx, cst, tile, row0, ct):
            acc = T.alloc_buffer((nrows, JV, L), "float32", scope="global")
            off = T.alloc_buffer((nrows, L), "float32", scope="global")
            tot = T.alloc_buffer((nrows, JV, L), "float32", scope="global")
            xs = T.alloc_buffer((nrows, L), "float32", scope="global")
            sc = T.alloc_buffer((L,), "float32", scope="global")
            for jh in range(per_word // JV):
                for r in T.unroll(nrows):
                    for v in T.unroll(JV):
                        for lane in T.vectorized(L):
                            tot[r, v, lane] = T.float32(0)
                for k in range(NCH):
                    for r in T.unroll(nrows):
                        for lane in T.vectorized(L):
                            off[r, lane] = T.float32(0)
                        for v in T.unroll(JV):
                            for lane in T.vectorized(L):
                                acc[r, v, lane] = T.float32(0)
                    for i in range(cst[tile, k], cst[tile, k + 1]):
                        f = idx[tile, i]
                        for lane in T.vectorized(L):
                            sc[lane] = psc[f, lane]
                        for r in T.unroll(nrows):
                            for lane in T.vectorized(L):
                                xs[r, lane] = T.Cast("float32", x[row0 + r, f]) * sc[lane]
                                off[r, lane] = off[r, lane] + xs[r, lane]
                        for v in T.unroll(JV):
                            for r in T.unroll(nrows):
                                for lane in T.vectorized(L):
                                    acc[r, v, lane] = acc[r, v, lane] + pan[f, (jh * JV + v) * L + lane] * xs[r, lane]
                    if cst[tile, k + 1] > cst[tile, k]:  # empty chunks add nothing, on both paths
                        for r in T.unroll(nrows):
                            for v in T.unroll(JV):
                                for lane in T.vectorized(L):
                                    tot[r, v, lane] = tot[r, v, lane] + chunk_value(
                                        acc[r, v, lane], off[r, lane], jh * JV + v)
                for r in T.unroll(nrows):
                    for v in T.unroll(JV):
                        for lane in T.vectorized(L):
                            y[row0 + r, (ct * L + lane) * per_word + jh * JV + v] = T.Cast(out_dtype, tot[r, v, lane])
        return body

    one, four = chunk_rows(1), chunk_rows(R)
    one_p, four_p = panel_rows(1), panel_rows(R)

    @T.prim_func(private=True)
    def ffn_value_q(var_x: T.handle, q: T.Buffer((T.int64(F), T.int64(words)), "uint32"),
                    scale: T.Buffer((T.int64(F), T.int64(C // group)), act_dtype), var_y: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        seq_len = T.int64()
        x = T.match_buffer(var_x, (seq_len, T.int64(F)), act_dtype)
        y = T.match_buffer(var_y, (seq_len, T.int64(C)), out_dtype)
        if seq_len >= PANEL_MIN_ROWS:
            idx = T.alloc_buffer((seq_len // R + seq_len % R, T.int64(F)), "int32")
            cst = T.alloc_buffer((seq_len // R + seq_len % R, NCH + 1), "int32")
            tile_lists(x, idx, cst, seq_len)
            # prefill: each task converts its column panel once and sweeps every token tile over it
            for ct in T.parallel(CTN):
                pan = T.alloc_buffer((T.int64(F), T.int64(per_word * L)), "float32", scope="local")
                psc = T.alloc_buffer((T.int64(F), T.int64(L)), "float32", scope="local")
                for f in range(F):
                    for lane in T.vectorized(L):
                        psc[f, lane] = T.Cast("float32", scale[f, (ct * L + lane) // wpg])
                    for j in T.unroll(per_word):
                        for lane in T.vectorized(L):
                            pan[f, j * L + lane] = code(q, f, ct * L + lane, j)
                for tile in range(seq_len // R + seq_len % R):
                    if tile < seq_len // R:
                        four_p(x, pan, psc, y, idx, cst, tile, tile * R, ct)
                    else:
                        one_p(x, pan, psc, y, idx, cst, tile, seq_len // R * R + (tile - seq_len // R), ct)
        else:
            part = T.alloc_buffer((seq_len // R + seq_len % R, NCH, R, CTN, per_word, L), "float32")
            offp = T.alloc_buffer((seq_len // R + seq_len % R, NCH, R, CTN, L), "float32")
            listed = T.alloc_buffer((seq_len // R + seq_len % R, NCH), "int32")
            for task in T.parallel((seq_len // R + seq_len % R) * NCH):
                tile = task // NCH
                k = task % NCH
                if tile < seq_len // R:
                    four(x, q, scale, part, offp, listed, tile, tile * R, k)
                else:
                    one(x, q, scale, part, offp, listed, tile, seq_len // R * R + (tile - seq_len // R), k)
            # the chunk partials, summed in chunk order (as the panel path does)
            for task in T.parallel(seq_len * CTN):
                t = task // CTN
                ct = task % CTN
                tile = _tile_of(t, seq_len)
                r = _row_in_tile(t, seq_len)
                tot = T.alloc_buffer((per_word, L), "float32", scope="global")
                for j in T.unroll(per_word):
                    for lane in T.vectorized(L):
                        tot[j, lane] = T.float32(0)
                for k in range(NCH):
                    if listed[tile, k] > 0:
                        for j in T.unroll(per_word):
                            for lane in T.vectorized(L):
                                tot[j, lane] = tot[j, lane] + chunk_value(part[tile, k, r, ct, j, lane],
                                                                          offp[tile, k, r, ct, lane], j)
                for j in T.unroll(per_word):
                    for lane in T.vectorized(L):
                        y[t, (ct * L + lane) * per_word + j] = T.Cast(out_dtype, tot[j, lane])

    return ffn_value_q
