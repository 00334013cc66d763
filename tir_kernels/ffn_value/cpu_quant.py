"""The llvm form of the group-quantized value product, over the nonzero rows only.

As ``quant_matmul``'s decode GEMV, one uint32 word sits in each SIMD lane and every code of the
lanes' words costs one AND, one int->float conversion and one FMA: ``word & (mask << bits*j)`` is
``code * 2**(bits*j)``, exact in fp32, and the power of two comes off once per output at the end.
The row's scale multiplies x once per row and lane (a group spans ``group / per_word`` lanes), and
``- qmax`` is folded out: ``sum_f x_f s_f (c_f - qmax) = sum_f c_f (x_f s_f) - qmax sum_f x_f s_f``.
Lane ``l``, code ``j`` of a column tile holds output column ``(tile_word + l) * per_word + j``.

Prefill (``PANEL_MIN_ROWS`` tokens on) converts each task's column panel once, to the same fp32
values (``code * 2**(bits*j)`` and the lane scales), and runs the same arithmetic over it, in passes
of 4 codes: a row's result does not depend on how many tokens share the call (the server batches
sequences and splits prompts, and must get the same tokens either way).
"""
from __future__ import annotations

from tvm.script import tirx as T

from ..quant_matmul.format import qmax
from .cpu import PANEL_MIN_ROWS, PREFETCH, TILE_ROWS, _prefetch, _tile_lists


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
    tile_lists = _tile_lists(F, act_dtype)

    def code(q, f, word, j):
        """``code_j * 2**(bits*j)`` of ``q[f, word]`` as fp32 (exact); the top code shifted down."""
        return T.Cast("float32", T.Cast("int32", T.if_then_else(
            j == last, T.shift_right(q[f, word], T.uint32(bits * last)),
            T.bitwise_and(q[f, word], T.shift_left(T.uint32(mask), T.Cast("uint32", bits * j))))))

    def tile_body(nrows: int, panel: bool):
        # direct (decode, batches): codes and scales from q / scale, all codes in one pass;
        # panel (prefill): the same values from the task's fp32 panel, 4 codes per pass
        JV = min(4, per_word) if panel else per_word

        @T.macro
        def body(x, q, scale, pan, psc, y, idx, cnt, tile, row0, ct):
            acc = T.alloc_buffer((nrows, JV, L), "float32", scope="global")
            off = T.alloc_buffer((nrows, L), "float32", scope="global")
            xs = T.alloc_buffer((nrows, L), "float32", scope="global")
            sc = T.alloc_buffer((L,), "float32", scope="global")
            for jh in range(per_word // JV):
                for r in T.unroll(nrows):
                    for lane in T.vectorized(L):
                        off[r, lane] = T.float32(0)
                    for v in T.unroll(JV):
                        for lane in T.vectorized(L):
                            acc[r, v, lane] = T.float32(0)
                for i in range(cnt[tile]):
                    f = idx[tile, i]
                    if panel:
                        for lane in T.vectorized(L):
                            sc[lane] = psc[f, lane]
                    else:
                        _prefetch(q, idx[tile, T.min(i + PREFETCH, cnt[tile] - 1)], ct * L)
                        for lane in T.vectorized(L):
                            sc[lane] = T.Cast("float32", scale[f, (ct * L + lane) // wpg])
                    for r in T.unroll(nrows):
                        for lane in T.vectorized(L):
                            xs[r, lane] = T.Cast("float32", x[row0 + r, f]) * sc[lane]
                            off[r, lane] = off[r, lane] + xs[r, lane]
                    for v in T.unroll(JV):
                        for r in T.unroll(nrows):
                            for lane in T.vectorized(L):
                                j = jh * JV + v
                                if panel:
                                    acc[r, v, lane] = acc[r, v, lane] + pan[f, j * L + lane] * xs[r, lane]
                                else:
                                    acc[r, v, lane] = acc[r, v, lane] + code(q, f, ct * L + lane, j) * xs[r, lane]
                for r in T.unroll(nrows):
                    for v in T.unroll(JV):
                        for lane in T.vectorized(L):
                            # 2**-(bits*j) from its exponent bits; the top code was shifted down instead
                            y[row0 + r, (ct * L + lane) * per_word + jh * JV + v] = T.Cast(
                                out_dtype, acc[r, v, lane] * T.if_then_else(
                                    jh * JV + v == last, T.float32(1),
                                    T.reinterpret("float32", T.shift_left(
                                        T.uint32(127) - T.Cast("uint32", bits * (jh * JV + v)), T.uint32(23))))
                                - T.float32(qm) * off[r, lane])
        return body

    one, four = tile_body(1, False), tile_body(R, False)
    one_p, four_p = tile_body(1, True), tile_body(R, True)

    @T.prim_func(private=True)
    def ffn_value_q(var_x: T.handle, q: T.Buffer((T.int64(F), T.int64(words)), "uint32"),
                    scale: T.Buffer((T.int64(F), T.int64(C // group)), act_dtype), var_y: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        seq_len = T.int64()
        x = T.match_buffer(var_x, (seq_len, T.int64(F)), act_dtype)
        y = T.match_buffer(var_y, (seq_len, T.int64(C)), out_dtype)
        idx = T.alloc_buffer((seq_len // R + seq_len % R, T.int64(F)), "int32")
        cnt = T.alloc_buffer((seq_len // R + seq_len % R,), "int32")
        tile_lists(x, idx, cnt, cnt, seq_len)  # no chunk starts: cnt stands in for them
        if seq_len >= PANEL_MIN_ROWS:
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
                        four_p(x, q, scale, pan, psc, y, idx, cnt, tile, tile * R, ct)
                    else:
                        one_p(x, q, scale, pan, psc, y, idx, cnt, tile, seq_len // R * R + (tile - seq_len // R), ct)
        else:
            for task in T.parallel((seq_len // R + seq_len % R) * CTN):
                # column-tile major: a thread's consecutive tasks sweep the same column panel
                tile = task % (seq_len // R + seq_len % R)
                ct = task // (seq_len // R + seq_len % R)
                if tile < seq_len // R:
                    four(x, q, scale, q, q, y, idx, cnt, tile, tile * R, ct)
                else:
                    one(x, q, scale, q, q, y, idx, cnt, tile, seq_len // R * R + (tile - seq_len // R), ct)

    return ffn_value_q
