"""Next-token sampling inside the library: ChatRWKV's penalised top-p / top-k / temperature draw
(``rwkv_relax.runtime.sampler``) on the logits where the model left them, one token id out.

Why: on the CPU the numpy sampler costs ~0.2 ms a token at vocab 65536 (float64 passes over the
whole vocabulary), as much as a whole decode step of a small model, and its 1.5 MB of work
vectors push the model's own data out of L2. Here every pass over the vocabulary is one
vectorised fp32 sweep split across the cores, and only a few hundred candidates are looked at
one by one.

Per row b of ``logits`` (B = D0 * D1 rows of V), with ``params[b] = (temperature, top_p, top_k, u)``:

1. Per chunk of the vocabulary (one parallel task each, its data in that core's L1), in place in
   the logits, which the kernel consumes: the row's adjustments (row, id, sub), ``x[id] -= sub``
   (ChatRWKV's presence / frequency penalties; ``sub = +inf`` bans); the chunk's maximum m_c and
   whether anything is NaN, +inf or finite; then e = exp(x - m_c) over x (the vectorised fp32 exp
   of ``wkv4.py``), its sum, and the lane-wise maximum of e per group of GROUP vectors. Then
   m = max m_c and S = sum_c exp(m_c - m) * sum_c: chunk c's e scale by exp(m_c - m), so a banned
   maximum far above the rest underflows nothing. Nothing but the logits is written at this
   size: the sampler must not push the model's own data out of the caches.
2. Candidates, in increasing id order: the ids with ``e >= RUNG * S``. At most 1 / RUNG = 4096
   ids can hold a 1/4096 share, and every other token is below all of them. Each chunk is scanned
   by its own task, visiting only the lanes whose group maximum reaches the threshold.
3. top-p (< 1): the cutoff is the largest candidate value c with ``sum(e >= c) >= top_p * S``
   (ChatRWKV's "value at which the sorted cumulative sum reaches top_p", ties kept), found by
   bisection on the fp32 bit patterns of the candidates (vectorised sums); top-k (0 < k < V): the
   k-th largest value, ties broken towards lower ids as the numpy sampler does. Kept: both.
   Where the candidates cannot decide:
   - top-p reaches below them under top-k: the cutoff lies below every candidate, so it keeps
     them all and top-k keeps its k (k <= the candidates: no other token can tie with the k-th);
   - without top-k, T > 0 (top-p on a flat row; no token holds 1/4096 of the mass): the full
     vocabulary. e * scale in place; per task its mass per bucket of bit patterns (``>> HSHIFT``,
     a quarter octave; SUBS interleaved copies so the adds do not chain through memory); the
     bucket where the mass from the top reaches top_p * S; the bisection over that bucket's
     values alone; then the listless draw below (~0.24 ms at V = 65536 for top-p 0.85-0.95 where
     the lists of rungs 2 and 3 took 1.2-1.5 ms);
   - otherwise (k larger than their number): steps 2-3 run again on ``e >= RUNG2 * S``
     (the numpy sampler's second rung), then on every token with e > 0.
   Keep-all (top_p >= 1 without top-k, T > 0: no filter, OpenAI's default) builds no candidate
   list either. The listless draw: q (step 4) in place for every kept token (e >= TINY and at
   or above the cutoff), each chunk's fp64 sum lane by lane, the chunk whose running sum passes
   ``u * sum q``, then that chunk id by id (keep-all: ~0.06 ms at T = 1, ~0.13 ms otherwise, at
   V = 65536; through the last rung's list it took 0.45 ms).
4. Weights q = e^(1 / T) = exp((x - m) / T) over the kept tokens (fp32 in whole vectors through
   ``ln_f32_vec``; the maximum is always kept), summed in fp64; the token is the first kept id
   whose running sum of q exceeds ``u * sum q`` (``searchsorted(..., "right")``).

Temperature 0 (greedy) is numpy's argmax of the adjusted logits, exactly: step 1 takes each
chunk's maximum and the first id holding it, and computes no e at all (an argmax through the rungs
cost the full exp pass, and on a flat row a second candidate list).

The result is the token id, or what the numpy sampler raises for, in its order of checks:
``NOTHING`` (every token banned or not finite), ``NAN``, ``POS_INF`` (temperature 0 returns the
first +inf instead, as numpy's argmax does). The draw is the numpy sampler's up to rounding: fp32
exp and sums against its float64 ones can move a token sitting exactly on the cutoff, or a ``u`` on
a boundary of the cumulative sum.
"""
from __future__ import annotations

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

from .wkv4 import exp_f32_vec

RUNG = 2.0 ** -12
RUNG2 = 2.0 ** -16  # the second rung, as the numpy sampler's: most of a flat row's mass, not all of it
TINY = float(np.finfo(np.float32).tiny)  # the last rung: every e > 0
CHUNKS = 16  # parallel tasks per pass
HSHIFT = 21  # full-vocabulary top-p: buckets of fp32 bit patterns >> HSHIFT (a quarter octave each)
NB = 512  # buckets: every e <= 1 (bits <= 0x3F800000) has bits >> HSHIFT < NB
SUBS = 4  # histogram copies per task, lane l adding into copy l % SUBS: no chain through memory
LANES = 16
GROUP = 16  # vectors per group of the candidate search
# what the numpy sampler raises for (SamplerError), in its order of checks
NOTHING = -1  # every token banned or not finite
NAN = -2  # a logit (or a penalty) is NaN
POS_INF = -3  # a logit is +inf (temperature 0 takes it as the maximum instead)
_BITS = 31  # bisection steps over non-negative fp32 bit patterns [0, 0x7F800000]


def chunk_length(V: int) -> int:
    """Tokens per parallel task (the last chunk may hold fewer): whole groups of GROUP vectors."""
    return -(-V // (CHUNKS * GROUP * LANES)) * GROUP * LANES


def _check_vocab(V: int) -> None:
    if not isinstance(V, int) or isinstance(V, bool) or V < 1:
        raise ValueError(f"V must be a positive Python int, got {V!r}")


def sample_logits(V: int, target: str = "cpu"):
    """The sampling PrimFunc for vocabulary ``V``: params (logits (D0, D1, V) f32, adj_row (P,) i32,
    adj_id (P,) i32, adj_sub (P,) f32, params (B, 4) f32, out (B,) i32), B = D0 * D1 rows; D0, D1
    and P symbolic.
    ``adj_id`` must lie in [0, V) (ids outside are skipped)."""
    _check_vocab(V)
    if target != "cpu":
        raise ValueError(f"unknown sample_logits target {target!r}; choose 'cpu'")
    ch = chunk_length(V)
    blocks = ch // LANES  # vectors per chunk
    groups = blocks // GROUP
    padded = CHUNKS * ch
    capacity = padded + LANES  # every token, plus a vector of padding: the last rung may take them all
    f32, f64, i32, i64 = "float32", "float64", "int32", "int64"
    inf = T.float32(float("inf"))
    # |x| <= big: finite; NaN is the value that is neither finite nor infinite (TVM's simplifier
    # folds the textbook x != x to false)
    big = T.float32(float(np.finfo(np.float32).max))

    def is_finite(x):  # 1.0 / 0.0
        return T.Select(T.fabs(x) <= big, T.float32(1), T.float32(0))

    def is_nan(x):
        return T.Select(tirx.any(T.fabs(x) <= big, T.fabs(x) == inf), T.float32(0), T.float32(1))
    hmax, hmin, hsum = _lane_tree(T.max), _lane_tree(T.min), _lane_tree(lambda a, b: a + b)

    def bucket(bits):
        """The full-vocabulary top-p bucket (int64) of an fp32 bit pattern."""
        return tirx.Cast(i64, tirx.min(tirx.shift_right(bits, tirx.const(HSHIFT, i32)), tirx.const(NB - 1, i32)))

    @T.macro
    def look(logits, r0, r1, at, l, vec, fin, nan, pinf):
        """Lane l of the vector at ``at``: the maximum, what is finite / NaN, the first +inf id."""
        x: T.let = logits[r0, r1, at + l]
        vec[l] = T.max(vec[l], x)
        fin[l] = T.max(fin[l], is_finite(x))
        nan[l] = T.max(nan[l], is_nan(x))
        pinf[l] = T.min(pinf[l], T.Select(x == inf, T.Cast("int32", at + l), T.int32(V)))

    @T.macro
    def first(logits, r0, r1, at, l, mc, ids):
        """Lane l: the lowest id whose value is the chunk maximum ``mc``."""
        ids[l] = T.min(ids[l], T.Select(logits[r0, r1, at + l] == mc, T.Cast("int32", at + l), T.int32(V)))

    @T.macro
    def weigh(logits, r0, r1, at, l, mc, part, vec):
        """Lane l: e = exp(x - m_c) in place, into the lane's sum and maximum."""
        ev: T.let = exp_f32_vec(logits[r0, r1, at + l] - mc)
        logits[r0, r1, at + l] = ev
        part[l] = part[l] + ev
        vec[l] = T.max(vec[l], ev)

    @T.macro
    def weight(logits, r0, r1, at, l, sc, lo_bits, temp, qacc, powered):
        """Lane l of a draw without a candidate list: q = (e * sc)^(1 / T) where e * sc is kept
        (>= TINY, the last rung's test, and bits >= lo_bits, the top-p cutoff), else 0, in place,
        into the lane's fp64 sum. The same fp32 arithmetic as step 5 on a candidate; ``powered``
        (T != 1, a Python bool: two loops, so that T = 1 never computes the ln and exp)."""
        v: T.let = logits[r0, r1, at + l] * sc
        w: T.let = exp_f32_vec(ln_f32_vec(v) / temp) if powered else v
        q: T.let = T.Select(v >= T.float32(TINY) and T.reinterpret(i32, v) >= lo_bits, w, T.float32(0))
        logits[r0, r1, at + l] = q
        qacc[l] = qacc[l] + T.Cast(f64, q)

    @T.macro
    def each_lane(lane, logits, r0, r1, at, *extra):
        """The lane macro ``lane`` (look, first, weigh, weight) on each lane of the vector at
        ``at``: vectorised when whole, lane by lane on the vocabulary's last, partial one."""
        if at + LANES <= V:
            for l in T.vectorized(T.int64(LANES)):
                lane(logits, r0, r1, at, l, *extra)
        elif at < V:
            for l in range(T.int64(LANES)):
                if at + l < V:
                    lane(logits, r0, r1, at, l, *extra)

    @T.macro
    def bisect(lb, le, n_vec, acc, lo, hi, enough):
        """Largest bit pattern t in [lo, hi) with enough(t) (monotone: true at lo, false at hi);
        acc[] holds, per lane, the count or the sum of the candidates with bits >= t."""
        for _it in range(_BITS):
            if hi[0] - lo[0] > T.int32(1):
                mid: T.let = lo[0] + (hi[0] - lo[0]) // T.int32(2)
                for l in T.vectorized(T.int64(LANES)):
                    acc[l] = T.float64(0)
                for i in range(n_vec):
                    for l in T.vectorized(T.int64(LANES)):
                        acc[l] = acc[l] + T.Select(lb[i * LANES + l] >= mid, T.Cast(f64, le[i * LANES + l]),
                                                   T.float64(0))
                hsum(acc)
                if enough(acc[0]):
                    lo[0] = mid
                else:
                    hi[0] = mid

    @T.prim_func(private=True, s_tir=True)
    def sample(var_logits: T.handle, var_adj_row: T.handle, var_adj_id: T.handle,
               var_adj_sub: T.handle, var_params: T.handle, var_out: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        D0 = T.int64()
        D1 = T.int64()
        P = T.int64()
        # (D0, D1, V) as prefill / decode / batch_decode return it: row b is [b // D1, b % D1]
        logits = T.match_buffer(var_logits, (D0, D1, V), f32)
        adj_row = T.match_buffer(var_adj_row, (P,), i32)
        adj_id = T.match_buffer(var_adj_id, (P,), i32)
        adj_sub = T.match_buffer(var_adj_sub, (P,), f32)
        params = T.match_buffer(var_params, (D0 * D1, 4), f32)
        out = T.match_buffer(var_out, (D0 * D1,), i32)
        gmax = T.alloc_buffer((padded // GROUP,), f32)  # per group of GROUP vectors, lane-wise max of e
        cid = T.alloc_buffer((padded,), i32)  # each chunk's candidates, in its own slice
        ccount = T.alloc_buffer((CHUNKS,), i64)
        cmax = T.alloc_buffer((CHUNKS,), f32)
        cflag = T.alloc_buffer((CHUNKS, 2), f32)  # some value finite, some NaN
        cinf = T.alloc_buffer((CHUNKS,), i32)  # the first +inf id (V: none)
        cfirst = T.alloc_buffer((CHUNKS,), i32)  # greedy: the first id holding the chunk's maximum
        scale = T.alloc_buffer((CHUNKS,), f32)
        csum = T.alloc_buffer((CHUNKS,), f64)
        qsum = T.alloc_buffer((CHUNKS,), f64)  # the listless draw: each chunk's sum of q
        # the candidates, in increasing id order, padded to whole vectors (bits -1: never counted)
        lid = T.alloc_buffer((capacity,), i32)
        le = T.alloc_buffer((capacity,), f32)
        lb = T.alloc_buffer((capacity,), i32)
        lq = T.alloc_buffer((capacity,), f64)
        ones = T.alloc_buffer((capacity,), f32)
        acc = T.alloc_buffer((LANES,), f64)
        sf = T.alloc_buffer((3,), f32)  # m, some value finite, some NaN
        sd = T.alloc_buffer((4,), f64)  # S, kept weight, running weight
        # n candidates, token, ties left, top-p undecided, decided, listless draw: a chunk passed u * total
        si = T.alloc_buffer((7,), i64)  # ... and how a listless draw takes e: 1 times scale, 2 as it is
        hist = T.alloc_buffer((CHUNKS, SUBS * NB), f64)  # full-vocabulary top-p: mass per bucket
        lo = T.alloc_buffer((1,), i32)
        hi = T.alloc_buffer((1,), i32)
        for b in range(D0 * D1):
            r0: T.let = b // D1
            r1: T.let = b % D1
            # 1. one task per chunk, on data in its core's L1, all in place in the logits: this
            # row's penalties and bans in the chunk; the chunk's maximum m_c and what is not
            # finite; e = exp(x - m_c) over x, its sum, and per group of GROUP vectors the
            # lane-wise maximum of e (vertical: no shuffles in the hot loop)
            for c in T.parallel(T.int64(CHUNKS)):
                vec = T.alloc_buffer((LANES,), f32, scope="global")
                fin = T.alloc_buffer((LANES,), f32, scope="global")
                nan = T.alloc_buffer((LANES,), f32, scope="global")
                pinf = T.alloc_buffer((LANES,), i32, scope="global")
                firsts = T.alloc_buffer((LANES,), i32, scope="global")  # greedy: per lane, the first id at mc
                part = T.alloc_buffer((LANES,), f32, scope="global")
                for p in range(P):
                    if adj_row[p] == T.Cast(i32, b) and T.Cast(i64, adj_id[p]) >= c * ch and T.Cast(
                            i64, adj_id[p]) < c * ch + ch and adj_id[p] < V:
                        logits[r0, r1, adj_id[p]] = logits[r0, r1, adj_id[p]] - adj_sub[p]
                for l in T.vectorized(T.int64(LANES)):
                    vec[l] = -inf
                    fin[l] = T.float32(0)
                    nan[l] = T.float32(0)
                    pinf[l] = T.int32(V)
                for i in range(T.int64(blocks)):
                    at: T.let = c * ch + i * LANES
                    each_lane(look, logits, r0, r1, at, vec, fin, nan, pinf)
                hmax(vec)
                hmax(fin)
                hmax(nan)
                hmin(pinf)
                cmax[c] = vec[0]
                cflag[c, 0] = fin[0]
                cflag[c, 1] = nan[0]
                cinf[c] = pinf[0]
                mc: T.let = vec[0]
                greedy: T.let = params[b, 0] <= T.float32(0)
                if greedy:  # argmax needs no weights: the chunk's first id holding mc, then stop
                    for l in T.vectorized(T.int64(LANES)):
                        firsts[l] = T.int32(V)
                    for i in range(T.int64(blocks)):
                        at3: T.let = c * ch + i * LANES
                        each_lane(first, logits, r0, r1, at3, mc, firsts)
                    hmin(firsts)
                    cfirst[c] = firsts[0]
                for l in T.vectorized(T.int64(LANES)):
                    part[l] = T.float32(0)
                if not greedy:  # (argmax reads no weights, group maxima or sums)
                    for g in range(T.int64(groups)):
                        for l in T.vectorized(T.int64(LANES)):
                            vec[l] = T.float32(0)
                        if T.fabs(mc) <= big:  # else nothing finite to weigh (or will fail)
                            for v in range(T.int64(GROUP)):
                                at2: T.let = c * ch + (g * GROUP + v) * LANES
                                each_lane(weigh, logits, r0, r1, at2, mc, part, vec)
                        for l in T.vectorized(T.int64(LANES)):
                            gmax[(c * groups + g) * LANES + l] = vec[l]
                hsum(part)
                csum[c] = T.Cast(f64, part[0])
            sf[0] = -inf
            sf[1] = T.float32(0)
            sf[2] = T.float32(0)
            si[1] = T.int64(V)
            for c in range(T.int64(CHUNKS)):
                sf[0] = T.max(sf[0], cmax[c])
                sf[1] = T.max(sf[1], cflag[c, 0])
                sf[2] = T.max(sf[2], cflag[c, 1])
                si[1] = T.min(si[1], T.Cast(i64, cinf[c]))
            m: T.let = sf[0]
            # what the numpy sampler raises, in its order (temperature 0 takes a +inf as the maximum)
            if sf[1] == T.float32(0):
                out[b] = T.int32(NOTHING)  # every token banned or not finite
            elif sf[2] != T.float32(0):
                out[b] = T.int32(NAN)
            elif si[1] < V:
                out[b] = T.Select(params[b, 0] <= T.float32(0), T.Cast(i32, si[1]), T.int32(POS_INF))
            else:
                # 2. S = sum_c exp(m_c - m) * sum(chunk c); chunk c's e scale by f_c = exp(m_c - m)
                sd[0] = T.float64(0)
                for c in range(T.int64(CHUNKS)):
                    if cmax[c] > -inf:
                        # a chunk whose maximum sits more than ~87 below m: its scale is a denormal,
                        # below every threshold with any e (<= 1) it multiplies, and every product
                        # with it a denormal (a microcode assist each: peaked logits ran 3.5x
                        # slower). 0 instead: no candidate changes, and S >= 1 in fp64 cannot see it
                        sc: T.let = T.Cast(f32, T.exp(T.Cast(f64, cmax[c]) - T.Cast(f64, m)))
                        scale[c] = T.Select(sc >= T.float32(TINY), sc, T.float32(0))
                        sd[0] = sd[0] + csum[c] * T.Cast(f64, scale[c])
                    else:
                        scale[c] = T.float32(0)
                # 3-5 on a rung: first the candidates e >= RUNG * S (at most 1 / RUNG of them); when
                # they cannot decide (top-k longer than they are), e >= RUNG2 * S, then every
                # token with e > 0; top-p without top-k and keep-all take the full vocabulary below
                si[4] = T.int64(0)  # decided
                temp: T.let = params[b, 0]
                top_p: T.let = params[b, 1]
                top_k: T.let = T.Cast(i64, params[b, 2])
                k_on: T.let = top_k > T.int64(0) and top_k < V
                # no filter: the listless draw at once
                keep_all: T.let = temp > T.float32(0) and top_p >= T.float32(1) and not k_on
                # without top-k, a row that rung 1 cannot decide (a flat one under top-p) takes the
                # full vocabulary: a cutoff from a histogram of e, then a listless draw (the lists
                # of rungs 2 and 3 cost 1.2-1.5 ms at 65536)
                full: T.let = temp > T.float32(0) and not k_on
                si[6] = T.Select(keep_all, T.int64(1), T.int64(0))
                if temp <= T.float32(0):
                    # greedy: the first id holding the maximum m, from phase 1's per-chunk firsts
                    si[1] = T.int64(V)
                    for c in range(T.int64(CHUNKS)):
                        if si[1] == T.int64(V) and cmax[c] == m:
                            si[1] = T.Cast(i64, cfirst[c])
                    out[b] = T.Cast(i32, si[1])
                    si[4] = T.int64(1)
                lo[0] = T.int32(0)
                for attempt in range(3):
                    if si[4] == T.int64(0) and si[6] == T.int64(0) and (attempt == 0 or not full):
                        # 3. candidates: e >= RUNG * S, in increasing id order. Each chunk is scanned by
                        # the task that wrote it (its e is in that core's cache) into its own slice, then
                        # the slices are joined. Id = (group * GROUP + v) * LANES + l: the lanes whose
                        # group maximum reaches the threshold, then v outer, so ids come out in order
                        last: T.let = attempt == 2
                        thr: T.let = T.Select(last, T.float32(TINY), T.Select(
                            attempt == 0, T.Cast(f32, sd[0] * T.float64(RUNG)), T.Cast(f32, sd[0] * T.float64(RUNG2))))
                        for c in T.parallel(T.int64(CHUNKS)):
                            hit = T.alloc_buffer((LANES,), i32, scope="global")
                            nh = T.alloc_buffer((2,), i64, scope="global")  # hit lanes, candidates
                            nh[1] = T.int64(0)
                            for g in range(T.int64(groups)):
                                nh[0] = T.int64(0)
                                for l in range(T.int64(LANES)):
                                    if gmax[(c * groups + g) * LANES + l] * scale[c] >= thr:
                                        hit[nh[0]] = T.Cast(i32, l)
                                        nh[0] = nh[0] + T.int64(1)
                                for v in range(T.int64(GROUP)):
                                    for j in range(nh[0]):
                                        idx: T.let = c * ch + (g * GROUP + v) * LANES + T.Cast(i64, hit[j])
                                        if idx < V and logits[r0, r1, idx] * scale[c] >= thr:
                                            cid[c * ch + nh[1]] = T.Cast(i32, idx)
                                            nh[1] = nh[1] + T.int64(1)
                            ccount[c] = nh[1]
                        si[0] = T.int64(0)
                        for c in range(T.int64(CHUNKS)):
                            for k in range(ccount[c]):
                                lid[si[0]] = cid[c * ch + k]
                                le[si[0]] = logits[r0, r1, cid[c * ch + k]] * scale[c]
                                lb[si[0]] = T.reinterpret(i32, le[si[0]])
                                si[0] = si[0] + T.int64(1)
                        n_cand: T.let = si[0]
                        n_vec: T.let = (n_cand + T.int64(LANES - 1)) // T.int64(LANES)
                        # on the last rung a k beyond the tokens with e > 0 keeps them all
                        k_use: T.let = k_on and top_k <= n_cand
                        if not last and (n_cand == T.int64(0) or (k_on and top_k > n_cand)):
                            si[4] = T.int64(0)  # the next rung
                        else:
                            for k in range(n_cand, n_vec * LANES):
                                le[k] = T.float32(0)
                                lb[k] = T.int32(-1)
                            # kept: bits >= lo[0] (top-p), then top-k on top
                            lo[0] = T.int32(0)
                            si[3] = T.int64(0)
                            if top_p < T.float32(1):
                                target: T.let = T.Cast(f64, top_p) * sd[0]
                                sd[1] = T.float64(0)
                                for k in range(n_cand):
                                    sd[1] = sd[1] + T.Cast(f64, le[k])
                                # top-p reaches below the rung: the next rung, except on the last
                                # (there only by rounding) and under top-k, which keeps its k
                                # here: the cutoff lies below every candidate, and so keeps them all
                                if sd[1] < target:
                                    si[3] = T.Select(last or k_use, T.int64(0), T.int64(1))
                                else:
                                    hi[0] = T.int32(0x7F800000)
                                    bisect(lb, le, n_vec, acc, lo, hi, lambda got: got >= target)
                            for k in range(n_cand):
                                lq[k] = T.Select(lb[k] >= lo[0], T.float64(1), T.float64(0))
                            if k_use:
                                # the k-th largest value: largest t with count(bits >= t) >= k
                                lo[0] = T.int32(0)
                                hi[0] = T.int32(0x7F800000)
                                for k in range(n_vec * LANES):
                                    ones[k] = T.Select(lb[k] >= T.int32(0), T.float32(1), T.float32(0))
                                bisect(lb, ones, n_vec, acc, lo, hi, lambda got: got >= T.Cast(f64, top_k))
                                si[2] = top_k  # ties at the k-th kept, lowest ids first
                                for k in range(n_cand):
                                    if lb[k] > lo[0]:
                                        si[2] = si[2] - T.int64(1)
                                for k in range(n_cand):
                                    if lb[k] < lo[0]:
                                        lq[k] = T.float64(0)
                                    elif lb[k] == lo[0]:
                                        if si[2] > T.int64(0):
                                            si[2] = si[2] - T.int64(1)
                                        else:
                                            lq[k] = T.float64(0)
                            if si[3] == T.int64(1):
                                si[4] = T.int64(0)  # top-p reaches below the rung: the next one
                            else:
                                si[4] = T.int64(1)
                                # 5. weights over the kept ids; the first running sum > u * total
                                # exp((z - max) / T) = e^(1 / T) (the maximum is kept: its e is 1),
                                # in whole vectors
                                for i in range(n_vec):
                                    for l in T.vectorized(T.int64(LANES)):
                                        ones[i * LANES + l] = T.Select(
                                            temp == T.float32(1), le[i * LANES + l],
                                            exp_f32_vec(ln_f32_vec(le[i * LANES + l]) / temp))
                                sd[2] = T.float64(0)
                                for k in range(n_cand):
                                    if lq[k] > T.float64(0):
                                        lq[k] = T.Cast(f64, ones[k])
                                        sd[2] = sd[2] + lq[k]
                                goal: T.let = T.Cast(f64, params[b, 3]) * sd[2]
                                sd[3] = T.float64(0)
                                si[1] = T.int64(-1)
                                for k in range(n_cand):
                                    if lq[k] > T.float64(0):
                                        sd[3] = sd[3] + lq[k]
                                        if si[1] < T.int64(0) and sd[3] > goal:
                                            si[1] = T.Cast(i64, lid[k])
                                if si[1] < T.int64(0):  # u * total rounded up to the total itself
                                    for k in range(n_cand):
                                        if lq[k] > T.float64(0):
                                            si[1] = T.Cast(i64, lid[k])
                                out[b] = T.Cast(i32, si[1])
                if si[4] == T.int64(0) and si[6] == T.int64(0):
                    # full-vocabulary top-p (only rows with `full` get here undecided). e * scale in
                    # place (0 below TINY), and per task its mass per bucket of bit patterns
                    target3: T.let = T.Cast(f64, top_p) * sd[0]
                    for c in T.parallel(T.int64(CHUNKS)):
                        for j in range(T.int64(SUBS * NB // LANES)):
                            for l in T.vectorized(T.int64(LANES)):
                                hist[c, j * LANES + l] = T.float64(0)
                        for i in range(T.int64(blocks)):
                            at4: T.let = c * ch + i * LANES
                            for l in T.unroll(T.int64(LANES)):
                                if at4 + l < V:
                                    v4: T.let = logits[r0, r1, at4 + l] * scale[c]
                                    v5: T.let = T.Select(v4 >= T.float32(TINY), v4, T.float32(0))
                                    logits[r0, r1, at4 + l] = v5
                                    hb: T.let = (l % SUBS) * NB + bucket(T.reinterpret(i32, v5))
                                    hist[c, hb] = hist[c, hb] + T.Cast(f64, v5)
                    for j in range(T.int64(NB // LANES)):
                        for l in T.vectorized(T.int64(LANES)):
                            lq[j * LANES + l] = T.float64(0)
                    for c in range(T.int64(CHUNKS)):
                        for s4 in range(T.int64(SUBS)):
                            for j in range(T.int64(NB // LANES)):
                                for l in T.vectorized(T.int64(LANES)):
                                    lq[j * LANES + l] = lq[j * LANES + l] + hist[c, s4 * NB + j * LANES + l]
                    # the bucket where the mass from the top reaches the target; sd[1]: the mass above it
                    sd[1] = T.float64(0)
                    si[0] = T.int64(-1)
                    for jj in range(T.int64(NB)):
                        if si[0] < T.int64(0):
                            if sd[1] + lq[NB - 1 - jj] >= target3:
                                si[0] = NB - 1 - jj
                            else:
                                sd[1] = sd[1] + lq[NB - 1 - jj]
                    if si[0] >= T.int64(0):  # (else only by rounding: keep every token)
                        # the bucket's values, each task into its slice, then joined (moving left)
                        for c in T.parallel(T.int64(CHUNKS)):
                            nb = T.alloc_buffer((1,), i64, scope="global")
                            nb[0] = T.int64(0)
                            for i in range(T.int64(ch)):
                                if c * ch + i < V:
                                    bits4: T.let = T.reinterpret(i32, logits[r0, r1, c * ch + i])
                                    if bucket(bits4) == si[0]:
                                        lb[c * ch + nb[0]] = bits4
                                        le[c * ch + nb[0]] = logits[r0, r1, c * ch + i]
                                        nb[0] = nb[0] + T.int64(1)
                            ccount[c] = nb[0]
                        si[2] = T.int64(0)
                        for c in range(T.int64(CHUNKS)):
                            for k in range(ccount[c]):
                                lb[si[2]] = lb[c * ch + k]
                                le[si[2]] = le[c * ch + k]
                                si[2] = si[2] + T.int64(1)
                        n_b: T.let = si[2]
                        nv_b: T.let = (n_b + T.int64(LANES - 1)) // T.int64(LANES)
                        for k in range(n_b, nv_b * LANES):
                            le[k] = T.float32(0)
                            lb[k] = T.int32(-1)
                        lo[0] = T.Cast(i32, si[0]) * T.int32(1 << HSHIFT)
                        hi[0] = lo[0] + T.int32(1 << HSHIFT)
                        bisect(lb, le, nv_b, acc, lo, hi, lambda got: sd[1] + got >= target3)
                    si[6] = T.int64(2)
                if si[6] > T.int64(0):
                    # a draw without a candidate list: q per token in place (one vectorised pass
                    # per chunk, its fp64 sum lane by lane), the chunk where the running sum of
                    # the chunks' sums passes u * total, then the token in that chunk where the
                    # running sum passes it (one scalar pass over one chunk). Keep-all takes e
                    # times the chunk's scale; the full-vocabulary path left it scaled
                    for c in T.parallel(T.int64(CHUNKS)):
                        qacc = T.alloc_buffer((LANES,), f64, scope="global")
                        for l in T.vectorized(T.int64(LANES)):
                            qacc[l] = T.float64(0)
                        sc3: T.let = T.Select(si[6] == T.int64(1), scale[c], T.float32(1))
                        for i in range(T.int64(blocks)):
                            at3: T.let = c * ch + i * LANES
                            if temp == T.float32(1):
                                each_lane(weight, logits, r0, r1, at3, sc3, lo[0], temp, qacc, False)
                            else:
                                each_lane(weight, logits, r0, r1, at3, sc3, lo[0], temp, qacc, True)
                        hsum(qacc)
                        qsum[c] = qacc[0]
                    sd[2] = T.float64(0)
                    for c in range(T.int64(CHUNKS)):
                        sd[2] = sd[2] + qsum[c]
                    goal2: T.let = T.Cast(f64, params[b, 3]) * sd[2]
                    # the chunk: the first whose running sum passes the goal, else (u * total
                    # rounded up to the total) the last with any weight
                    sd[3] = T.float64(0)  # the sum of the chunks before it
                    si[0] = T.int64(-1)
                    si[2] = T.int64(0)
                    for c in range(T.int64(CHUNKS)):
                        if si[0] < T.int64(0):
                            if sd[3] + qsum[c] > goal2:
                                si[0] = c
                            else:
                                sd[3] = sd[3] + qsum[c]
                        if qsum[c] > T.float64(0):
                            si[2] = c
                    si[5] = T.Select(si[0] >= T.int64(0), T.int64(1), T.int64(0))
                    if si[5] == T.int64(0):
                        si[0] = si[2]
                    # the token: the first whose running sum passes the goal, else (no chunk
                    # passed it, or this chunk's sum taken lane by lane passed it and the same
                    # sum id by id does not) the chunk's last with any weight
                    si[1] = T.int64(-1)
                    si[3] = T.int64(-1)
                    for i in range(T.int64(ch)):
                        idx3: T.let = si[0] * ch + i
                        if idx3 < V:
                            if logits[r0, r1, idx3] > T.float32(0):
                                sd[3] = sd[3] + T.Cast(f64, logits[r0, r1, idx3])
                                si[3] = idx3
                                if si[1] < T.int64(0) and si[5] == T.int64(1) and sd[3] > goal2:
                                    si[1] = idx3
                    out[b] = T.Cast(i32, T.Select(si[1] >= T.int64(0), si[1], si[3]))
                    si[4] = T.int64(1)

    return sample


def _full_top_p(e: np.ndarray, S: float, top_p: np.float32, temperature: np.float32, u: np.float32) -> int:
    """Top-p over every token with e >= TINY (the kernel's histogram and bisection find the same
    cutoff: the largest value whose mass and above reaches top_p * S), then the listless draw."""
    ok = e >= np.float32(TINY)
    target = np.float64(top_p) * S
    if e[ok].astype(np.float64).sum() < target:  # only by rounding: keep them all
        return _listless_draw(e, ok, temperature, u)
    return _listless_draw(e, ok & (e >= _top_p_cutoff(e[ok], target)), temperature, u)


def _top_p_cutoff(values: np.ndarray, target: float) -> np.float32:
    """The value at which the sorted cumulative sum (fp64) of ``values`` reaches ``target``."""
    desc = np.sort(values)[::-1]
    return desc[np.searchsorted(np.cumsum(desc.astype(np.float64)), target)]


def _listless_draw(e: np.ndarray, kept: np.ndarray, temperature: np.float32, u: np.float32) -> int:
    """The kernel's draw without a candidate list: q for the kept tokens, fp64 sums lane by lane
    per chunk (16 lanes, then the pairwise tree), the chunk whose running sum passes u * total,
    the token in it id by id."""
    V = e.size
    ch = chunk_length(V)
    q = np.zeros(CHUNKS * ch, np.float32)
    with np.errstate(divide="ignore", under="ignore"):
        w = e if temperature == 1 else np.exp(np.log(e) / temperature).astype(np.float32)
    q[:V] = np.where(kept, w, np.float32(0))
    lanes = np.cumsum(q.astype(np.float64).reshape(CHUNKS, ch // LANES, LANES), axis=1)[:, -1]  # in order
    for half in (8, 4, 2, 1):
        lanes = lanes[:, :half] + lanes[:, half:2 * half]
    sums = lanes[:, 0]
    total = 0.0
    for s in sums:
        total += s
    goal = np.float64(u) * total
    base, chunk = 0.0, -1
    for c, s in enumerate(sums):
        if base + s > goal:
            chunk = c
            break
        base += s
    passed = chunk >= 0
    if not passed:  # u * total rounded up to the total: the last token of the last chunk with weight
        chunk = int(np.flatnonzero(sums > 0)[-1])
    last = -1
    for i in range(chunk * ch, min(chunk * ch + ch, V)):
        if q[i] > 0:
            base += np.float64(q[i])
            last = i
            if passed and base > goal:
                return i
    return last


def ln_f32_vec(x):
    """ln(x) for positive normal fp32 x from bit operations and a polynomial, so that LLVM can
    vectorise it: x = 2^k * m with m in [sqrt(2)/2, sqrt(2)), ln m = 2 atanh(t), t = (m - 1) /
    (m + 1), |t| <= 0.172, by its series to t^9 (next term < 1e-9). Within ~2 ulp of numpy's."""
    f32 = lambda c: tirx.const(c, "float32")  # noqa: E731
    bits = tirx.reinterpret("int32", x)
    k = tirx.shift_right(bits, tirx.const(23, "int32")) - tirx.const(127, "int32")
    m = tirx.reinterpret("float32", tirx.bitwise_or(tirx.bitwise_and(bits, tirx.const(0x7FFFFF, "int32")),
                                                    tirx.const(0x3F800000, "int32")))
    high = m > f32(1.41421356)
    m = tirx.Select(high, m * f32(0.5), m)
    k = tirx.Cast("float32", k + tirx.Select(high, tirx.const(1, "int32"), tirx.const(0, "int32")))
    t = (m - f32(1.0)) / (m + f32(1.0))
    t2 = t * t
    series = t * (f32(2.0) + t2 * (f32(2 / 3) + t2 * (f32(2 / 5) + t2 * (f32(2 / 7) + t2 * f32(2 / 9)))))
    return series + k * f32(0.693147180559945)


def _lane_tree(op):
    """Macro: part[0] = op over the 16 lanes of part, a pairwise tree."""

    @T.macro
    def tree(part):
        for l in T.vectorized(T.int64(8)):
            part[l] = op(part[l], part[l + 8])
        for l in T.vectorized(T.int64(4)):
            part[l] = op(part[l], part[l + 4])
        for l in T.vectorized(T.int64(2)):
            part[l] = op(part[l], part[l + 2])
        part[0] = op(part[0], part[1])

    return tree


def sample_logits_numpy(logits: np.ndarray, adj_row: np.ndarray, adj_id: np.ndarray, adj_sub: np.ndarray,
                        params: np.ndarray) -> np.ndarray:
    """Twin of :func:`sample_logits`, step for step (fp32 e, fp64 sums; numpy's exp in place of
    the kernel's polynomial, which is within 1 ulp of it). Returns the (B,) int32 tokens / codes."""
    logits = np.asarray(logits, np.float32).reshape(-1, np.shape(logits)[-1])
    out = np.empty(logits.shape[0], np.int32)
    for b, row in enumerate(logits):
        out[b] = _sample_row(row, np.asarray(adj_id)[np.asarray(adj_row) == b],
                             np.asarray(adj_sub, np.float32)[np.asarray(adj_row) == b], params[b])
    return out


def _sample_row(x: np.ndarray, ids: np.ndarray, sub: np.ndarray, params) -> int:
    temperature, top_p, top_k, u = (float(p) for p in params)
    top_k = int(top_k)
    x = x.copy()
    for i, s in zip(ids, sub):  # in order: an id listed twice is adjusted twice
        if 0 <= i < x.size:
            x[i] = np.float32(x[i] - s)
    if not np.isfinite(x).any():
        return NOTHING
    if np.isnan(x).any():
        return NAN
    if (x == np.inf).any():
        return int(np.argmax(x == np.inf)) if temperature <= 0 else POS_INF
    if temperature <= 0:
        return int(np.argmax(x))
    m = x.max()
    with np.errstate(under="ignore"):
        e = np.exp(x - m).astype(np.float32)
    S = e.astype(np.float64).sum()
    k_on = 0 < top_k < x.size
    if temperature > 0 and top_p >= 1 and not k_on:  # no filter: every token with e >= TINY
        return _listless_draw(e, e >= np.float32(TINY), np.float32(temperature), np.float32(u))
    full = temperature > 0 and not k_on  # what rung 1 cannot decide takes the full vocabulary
    rungs = ((False, np.float32(S * RUNG)), (False, np.float32(S * RUNG2)), (True, np.float32(TINY)))
    for rung_index, (last, rung) in enumerate(rungs):
        if full and rung_index > 0:
            return _full_top_p(e, S, np.float32(top_p), np.float32(temperature), np.float32(u))
        cand = np.flatnonzero(e >= rung)
        if not last and (cand.size == 0 or (k_on and top_k > cand.size)):
            continue
        le = e[cand]
        keep = np.ones(cand.size, bool)
        if top_p < 1:
            target = np.float64(np.float32(top_p)) * S
            if le.astype(np.float64).sum() < target:
                if not last and not (k_on and top_k <= cand.size):  # top-k keeps its k here
                    continue
            else:
                keep &= le >= _top_p_cutoff(le, target)
        if k_on and top_k <= cand.size:
            kth = np.sort(le)[::-1][top_k - 1]
            ranked = le > kth
            ties = np.flatnonzero(le == kth)
            ranked[ties[:top_k - int(ranked.sum())]] = True
            keep &= ranked
        break
    kept = cand[keep]
    q = e[kept]
    if temperature != 1:  # fp32, as the kernel's whole-vector ln and exp
        q = np.exp(np.log(q) / np.float32(temperature)).astype(np.float32)
    q = q.astype(np.float64)
    cdf = np.cumsum(q)
    return int(kept[min(int(np.searchsorted(cdf, np.float64(np.float32(u)) * cdf[-1], side="right")), kept.size - 1)])
