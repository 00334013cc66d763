"""The library's sampling kernel (tir_kernels/sampling.py) against its numpy twin and against the
runtime's numpy Sampler (the reference: ChatRWKV's sample_logits, bit for bit in float64), on llvm.

A draw ``u`` that lies within 1e-6 of a boundary of the cumulative distribution may legitimately go
either way (fp32 exp and sums against float64), so the comparisons skip such ``u``.
"""
import functools

import numpy as np
import pytest
import tvm

from rwkv_relax.runtime.sampler import INF_LOGITS, KERNEL_ERRORS, NAN_LOGITS, NOTHING_TO_SAMPLE, Sampler, SamplerError
from tir_kernels.sampling import NAN, NOTHING, POS_INF, chunk_length, sample_logits, sample_logits_numpy


@functools.lru_cache(maxsize=None)
def _build(V: int):
    cpu = tvm.get_global_func("target.llvm_get_system_cpu")()
    mod = tvm.IRModule({"sample": sample_logits(V).with_attr("global_symbol", "sample")})
    return tvm.compile(mod, tvm.target.Target({"kind": "llvm", "mcpu": cpu, "num-cores": 2}))["sample"]


def run_kernel(logits, adj_row, adj_id, adj_sub, params) -> np.ndarray:
    """The kernel on a copy of ``logits`` (it works in place), as (1, B, V) like batch_prefill's."""
    logits = np.atleast_2d(np.asarray(logits, np.float32))[None]
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.ascontiguousarray(a, dt), dev) for a, dt in (
        (logits, np.float32), (adj_row, np.int32), (adj_id, np.int32), (adj_sub, np.float32),
        (np.atleast_2d(params), np.float32))]
    out = tvm.runtime.empty((logits.shape[1],), "int32", dev)
    _build(logits.shape[2])(*args, out)
    return out.numpy()


def reference(logits, sampler: Sampler, u: float) -> tuple[int, bool]:
    """(the numpy Sampler's token for ``u``, whether ``u`` is clear of every cdf boundary)."""
    ids, q = sampler._support(np.asarray(logits, np.float32))
    cdf = np.cumsum(q) / q.sum()
    clear = bool(np.all(np.abs(cdf - np.float32(u)) > 1e-6))
    return sampler.sample(np.asarray(logits, np.float32), u=float(np.float32(u))), clear


def adjustments(sampler: Sampler):
    ids, sub, _ = sampler.kernel_args()
    return np.zeros(ids.size, np.int32), ids, sub


def logits_like_a_model(rng, V: int, scale: float = 2.0) -> np.ndarray:
    """Gaussian logits plus a few standouts: a peaked head over a long flat tail."""
    x = rng.standard_normal(V).astype(np.float32) * scale
    x[rng.choice(V, 5, replace=False)] += np.float32(3 * scale)
    return x


SETTINGS = [  # temperature, top_p, top_k
    (1.0, 0.3, 0), (1.0, 0.85, 0), (0.7, 0.5, 0), (1.6, 0.2, 0), (1.0, 1.0, 1), (1.0, 1.0, 7),
    (0.8, 0.6, 40), (1.0, 0.05, 3), (0.0, 0.3, 0), (0.0, 1.0, 0), (1.0, 1.0, 0), (0.5, 1.0, 0),
    (1.0, 0.9, 6000),
]


@pytest.mark.parametrize("V", [1000, 4099, 65536])  # 1000 and 4099: tails that are not whole vectors
@pytest.mark.parametrize("temperature, top_p, top_k", SETTINGS)
def test_kernel_draws_the_samplers_token(V, temperature, top_p, top_k):
    rng = np.random.default_rng(V + int(100 * top_p) + top_k)
    logits = logits_like_a_model(rng, V)
    sampler = Sampler(temperature=temperature, top_p=top_p, top_k=top_k, presence_penalty=0.4,
                      frequency_penalty=0.7, token_ban=[3, int(np.argmax(logits))])
    for token in [int(i) for i in np.argsort(logits)[-6:]] + [10, 10, 11]:  # penalise the head too
        sampler.accept(token)
    rows, ids, sub = adjustments(sampler)
    compared = 0
    for u in rng.random(40):
        want, clear = reference(logits, sampler, u)
        params = [temperature, top_p, top_k, u]
        got = run_kernel(logits, rows, ids, sub, params)[0]
        twin = sample_logits_numpy(logits[None], rows, ids, sub, np.array([params], np.float32))[0]
        assert got == twin
        if clear:
            assert got == want, (u, got, want)
            compared += 1
    assert compared >= 30


def test_top_k_ties_keep_the_lowest_ids():
    V = 2048
    logits = np.full(V, -4.0, np.float32)
    tied = [100, 7, 1500, 900]
    logits[tied] = 2.0
    logits[50] = 3.0
    sampler = Sampler(temperature=1.0, top_p=1.0, top_k=3, presence_penalty=0, frequency_penalty=0)
    seen = set()
    for u in np.linspace(0.01, 0.99, 25):
        got = run_kernel(logits, [], [], [], [1.0, 1.0, 3, u])[0]
        want, _ = reference(logits, sampler, u)
        assert got == want
        seen.add(int(got))
    assert seen == {50, 7, 100}  # the top one and the two lowest ids among the four tied


def test_rows_are_sampled_independently_with_their_own_adjustments():
    rng = np.random.default_rng(5)
    V = 3000
    logits = np.stack([logits_like_a_model(rng, V) for _ in range(3)])
    rows = np.array([0, 2, 2, 1], np.int32)
    ids = np.array([int(np.argmax(logits[0])), int(np.argmax(logits[2])), 4, 9], np.int32)
    sub = np.array([np.inf, 1.5, -0.5, 2.0], np.float32)
    params = np.array([[1.0, 0.4, 0, 0.3], [0.0, 0.4, 0, 0.7], [0.9, 0.7, 20, 0.55]], np.float32)
    batch = run_kernel(logits, rows, ids, sub, params)
    for b in range(3):
        mine = rows == b
        alone = run_kernel(logits[b], np.zeros(mine.sum(), np.int32), ids[mine], sub[mine], params[b])[0]
        assert batch[b] == alone
    assert batch[0] != np.argmax(logits[0])  # banned in row 0
    np.testing.assert_array_equal(batch, sample_logits_numpy(logits, rows, ids, sub, params))


def test_listless_rows_in_a_batch_are_drawn_as_alone():
    """Flat rows in one call: full-vocabulary top-p, keep-all and top-k under a top-p the first rung
    cannot reach, each with its own adjustments, draw what each draws alone and what the twin draws
    (the per-row histogram, cutoff and chunk sums start afresh on every row)."""
    rng = np.random.default_rng(3)
    V = 20000
    logits = np.stack([(rng.standard_normal(V) * 0.7).astype(np.float32) for _ in range(4)])
    rows = np.array([0, 1, 3, 3], np.int32)
    ids = np.array([5, 6, 7, 100], np.int32)
    sub = np.array([np.inf, 1.0, 0.5, np.inf], np.float32)
    params = np.array([[1.0, 0.9, 0, 0.3], [0.7, 1.0, 0, 0.6], [1.2, 0.95, 0, 0.1], [1.0, 0.8, 50, 0.9]],
                      np.float32)
    for _ in range(3):
        batch = run_kernel(logits, rows, ids, sub, params)
        for b in range(4):
            mine = rows == b
            alone = run_kernel(logits[b], np.zeros(mine.sum(), np.int32), ids[mine], sub[mine], params[b])[0]
            assert batch[b] == alone
        np.testing.assert_array_equal(batch, sample_logits_numpy(logits, rows, ids, sub, params))
        params[:, 3] = rng.random(4)


def test_bad_logits_give_the_numpy_samplers_errors():
    """Codes for what the numpy sampler raises, in its order of checks (one code table)."""
    assert KERNEL_ERRORS == {NOTHING: NOTHING_TO_SAMPLE, NAN: NAN_LOGITS, POS_INF: INF_LOGITS}
    V = 8192
    params = [1.0, 0.5, 0, 0.5]
    logits = np.random.default_rng(2).standard_normal(V).astype(np.float32)

    def numpy_error(x, temperature=1.0):
        sampler = Sampler(temperature=temperature, top_p=0.5, presence_penalty=0, frequency_penalty=0)
        try:
            return sampler.sample(x)
        except SamplerError as err:
            return str(err)

    cases = {"nan": (17, np.nan), "+inf": (17, np.inf), "nan after +inf": (4000, np.nan)}
    for name, (at, bad) in cases.items():
        x = logits.copy()
        x[at] = bad
        if name == "nan after +inf":
            x[20] = np.inf
        for temperature in (1.0, 0.0):
            got = run_kernel(x, [], [], [], [temperature, *params[1:]])[0]
            want = numpy_error(x, temperature)
            assert (KERNEL_ERRORS[got] if got < 0 else got) == want, (name, temperature)
    x = logits.copy()
    x[:100] = -np.inf  # -inf logits are tokens that cannot be drawn, not an error
    assert run_kernel(x, [], [], [], params)[0] >= 100
    assert run_kernel(logits, np.zeros(V, np.int32), np.arange(V), np.full(V, np.inf), params)[0] == NOTHING
    # a banned maximum 200 above the rest: the shift is the maximum after the ban, nothing underflows
    x = np.full(V, -200.0, np.float32)
    x[3] = 0.0
    x[4000] = -199.0
    sampler = Sampler(top_p=0.5, presence_penalty=0, frequency_penalty=0, token_ban=[3])
    assert run_kernel(x, [0], [3], [np.inf], params)[0] == reference(x, sampler, 0.5)[0] >= 0


def test_chunks_far_below_the_maximum_draw_as_the_twin():
    """A token ~100 above every other, and chunks whose maxima sit 60-120 below it (their e
    scale underflows fp32: the kernel flushes that scale to 0 instead of multiplying denormals):
    the draws equal the twin's, greedy, top-p, top-k and keep-all."""
    rng = np.random.default_rng(7)
    V = 65536
    ch = chunk_length(V)  # the kernel's chunks
    for peak in (False, True):
        x = logits_like_a_model(rng, V)
        for c, drop in zip(range(3, 16, 3), (60, 90, 120, 200, 87)):
            x[c * ch:(c + 1) * ch] -= drop
        if peak:
            x[12345] = x.max() + 100
        for params in ((0, 1, 0, 0.3), (1, 0.3, 0, 0.7), (0.7, 0.9, 40, 0.2), (1, 1, 0, 0.999)):
            p = np.array([params], np.float32)
            none = np.zeros(0, np.int32)
            want = sample_logits_numpy(x[None], none, none, np.zeros(0, np.float32), p)
            assert (run_kernel(x, [-1], [0], [0], p) == want).all(), (peak, params)


def test_the_kernel_consumes_its_logits():
    """It works in place (nothing else of the logits' size is written): they become exp(x - max)."""
    V = 200  # one chunk (exp is taken from each chunk's own maximum), not a whole number of vectors
    x = logits_like_a_model(np.random.default_rng(3), V)
    dev = tvm.cpu()
    t = tvm.runtime.tensor(x[None, None], dev)
    out = tvm.runtime.empty((1,), "int32", dev)
    _build(V)(t, *(tvm.runtime.tensor(np.zeros(0, dt), dev) for dt in (np.int32, np.int32, np.float32)),
              tvm.runtime.tensor(np.array([[1.0, 0.5, 0, 0.5]], np.float32), dev), out)
    np.testing.assert_allclose(t.numpy()[0, 0], np.exp(x - x.max()), rtol=1e-6)


def test_flat_rows_and_keep_all_are_decided_on_the_second_rung():
    """No token of a flat row reaches 1/4096 of the mass: the kernel takes every token instead."""
    V = 8192
    flat = np.zeros(V, np.float32)
    flat[[5, 6000]] = 0.001  # nearly flat
    for params in ([1.0, 0.5, 0, 0.25], [1.0, 1.0, 0, 0.9], [1.3, 1.0, 5000, 0.4], [1.0, 0.999, 0, 0.6]):
        got = run_kernel(flat, [], [], [], params)[0]
        sampler = Sampler(temperature=params[0], top_p=params[1], top_k=int(params[2]), presence_penalty=0,
                          frequency_penalty=0)
        want, clear = reference(flat, sampler, params[3])
        assert got >= 0 and (got == want or not clear), (params, got, want)
        assert got == sample_logits_numpy(flat[None], [], [], [], np.array([params], np.float32))[0]
    # greedy on a flat row: the first id of the maximum
    assert run_kernel(np.zeros(V, np.float32), [], [], [], [0.0, 0.5, 0, 0.5])[0] == 0


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
def test_keep_all_draws_through_every_chunk_as_the_sampler(temperature):
    """top_p = 1 without top-k keeps every token and draws without a candidate list (chunk sums,
    then one chunk id by id): u from 0 to 1 walks the whole vocabulary in order, as the numpy
    Sampler's cdf does, and a u that rounds up to 1 in fp32 takes the last token with weight."""
    rng = np.random.default_rng(11)
    V = 65536 - 5  # a partial last vector
    x = rng.standard_normal(V).astype(np.float32) * 0.5
    banned = [V - 1, V - 2]
    sampler = Sampler(temperature=temperature, top_p=1.0, presence_penalty=0, frequency_penalty=0, token_ban=banned)
    rows, ids, sub = adjustments(sampler)
    us = np.concatenate([np.linspace(0.0, 0.999, 41), [np.nextafter(np.float32(1), np.float32(0)), 1.0]])
    got = [run_kernel(x, rows, ids, sub, [temperature, 1.0, 0, u])[0] for u in us]
    twin = [sample_logits_numpy(x[None], rows, ids, sub, np.array([[temperature, 1.0, 0, u]], np.float32))[0]
            for u in us]
    assert got == twin
    assert got == sorted(got) and got[0] == 0 and got[-1] == V - 3  # the last id not banned
    assert len({g // chunk_length(V) for g in got}) == 16  # every chunk drawn from
    compared = 0
    for u, g in zip(us, got):
        want, clear = reference(x, sampler, u)
        if clear:
            assert g == want, (u, g, want)
            compared += 1
    assert compared >= 30  # (u = 0 and u = 1 sit on boundaries)


@pytest.mark.parametrize("temperature, top_p, top_k", [
    (1.0, 0.85, 0), (0.7, 0.95, 0), (1.4, 0.5, 0), (1.0, 0.999, 0), (0.8, 0.9, 40), (1.0, 0.99, 300)])
def test_rows_too_flat_for_the_first_rung_draw_as_the_sampler(temperature, top_p, top_k):
    """The tokens holding 1/4096 of the mass hold far less than top_p of it. Without top-k the kernel
    takes the cutoff from the whole vocabulary (a histogram of e, a bisection inside one bucket) and
    draws without a list; with top-k the cutoff lies below every candidate and the k are kept from
    the first rung. Draws equal the twin's and the numpy Sampler's."""
    rng = np.random.default_rng(int(100 * top_p) + top_k)
    V = 65536 - 3
    x = (rng.standard_normal(V) * 0.8).astype(np.float32)
    x[rng.choice(V, 3, replace=False)] += 4.5  # a small head
    sampler = Sampler(temperature=temperature, top_p=top_p, top_k=top_k, presence_penalty=0.3,
                      frequency_penalty=0.5, token_ban=[7, int(np.argmax(x))])
    for token in (11, 12, 11, int(np.argsort(x)[-2])):
        sampler.accept(token)
    p = np.exp(sampler.adjust(x) - sampler.adjust(x).max())
    p /= p.sum()
    assert p[p >= 2.0 ** -12].sum() < 0.05 < top_p  # rung 1 cannot decide top-p
    rows, ids, sub = adjustments(sampler)
    compared = 0
    for u in rng.random(30):
        params = [temperature, top_p, top_k, u]
        got = run_kernel(x, rows, ids, sub, params)[0]
        assert got == sample_logits_numpy(x[None], rows, ids, sub, np.array([params], np.float32))[0]
        want, clear = reference(x, sampler, u)
        if clear:
            assert got == want, (u, got, want)
            compared += 1
    assert compared >= 20


def test_sampler_kernel_args_match_its_adjust():
    """kernel_args says what adjust does: bans subtract +inf, seen tokens their penalty."""
    sampler = Sampler(presence_penalty=0.3, frequency_penalty=0.5, penalty_decay=0.9, token_ban=[2, 40],
                      uncounted_ids=[5])
    for t in (7, 5, 7, 9):
        sampler.accept(t)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(64).astype(np.float32)
    ids, sub, (temperature, top_p, top_k, u) = sampler.kernel_args()
    z = logits.astype(np.float64)
    z[ids] -= sub
    np.testing.assert_allclose(z, sampler.adjust(logits), rtol=1e-6)
    assert (temperature, top_p, top_k) == (1.0, 0.85, 0) and 0 <= u < 1


def test_vectorised_ln_is_within_a_few_ulp():
    from tvm.script import tirx as T

    from tir_kernels.sampling import ln_f32_vec
    n = 4096

    @T.prim_func
    def ln(x: T.Buffer((n,), "float32"), y: T.Buffer((n,), "float32")):
        for i in range(n // 16):
            for l in T.vectorized(16):
                y[i * 16 + l] = ln_f32_vec(x[i * 16 + l])

    cpu = tvm.get_global_func("target.llvm_get_system_cpu")()
    f = tvm.compile(tvm.IRModule({"main": ln}), tvm.target.Target({"kind": "llvm", "mcpu": cpu}))["main"]
    rng = np.random.default_rng(0)
    x = np.concatenate([np.float32(2.0) ** rng.uniform(-126, 0, n // 2),  # e's range: (0, 1]
                        rng.uniform(0.5, 2.0, n // 2)]).astype(np.float32)
    x[:3] = [1.0, np.finfo(np.float32).tiny, np.sqrt(np.float32(2))]
    y = tvm.runtime.empty((n,), "float32", tvm.cpu())
    f(tvm.runtime.tensor(x), y)
    want = np.log(x.astype(np.float64))
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(y.numpy() - want) / np.maximum(ulp, 1e-12)) <= 4


def test_greedy_is_the_exact_argmax_of_the_adjusted_logits():
    """Temperature 0 takes numpy's argmax of the adjusted fp32 logits, found without weights:
    equal maxima in different chunks give the lower id; maxima one ulp apart near 0 (where
    exp(x - m) would round both to 1) give the larger; a penalty moves the maximum; a flat row
    (no token with 1/4096 of the mass), a partial last vector and a batch of such rows agree."""
    V = 65536 - 3
    ch = chunk_length(V)
    rng = np.random.default_rng(5)
    rows = []
    x = rng.standard_normal(V).astype(np.float32)
    x[[5 * ch + 7, 11 * ch + 2]] = 9.0  # a tie across chunks
    rows.append(x)
    x = np.zeros(V, np.float32)
    x[100], x[9 * ch + 1] = np.float32(1e-8), np.nextafter(np.float32(1e-8), np.float32(1))
    rows.append(x)
    rows.append(np.zeros(V, np.float32))  # flat: the first id
    x = rng.standard_normal(V).astype(np.float32)
    x[V - 1] = 50.0  # in the partial last vector
    rows.append(x)
    x = rng.standard_normal(V).astype(np.float32)
    x[[300, 7 * ch]] = (8.0, 7.5)
    rows.append(x)  # penalised below: row 4's adjustment takes 1.0 off id 300
    adj_row, adj_id, adj_sub = [4], [300], [1.0]
    params = np.array([[0.0, 0.3, 0, 0.5]] * len(rows), np.float32)
    got = run_kernel(np.stack(rows), adj_row, adj_id, adj_sub, params)
    want = []
    for b, row in enumerate(rows):
        z = row.copy()
        for r, i, s in zip(adj_row, adj_id, adj_sub):
            if r == b:
                z[i] = np.float32(z[i] - np.float32(s))
        want.append(int(np.argmax(z)))
    assert want == [5 * ch + 7, 9 * ch + 1, 0, V - 1, 7 * ch]
    assert got.tolist() == want
    assert sample_logits_numpy(np.stack(rows), adj_row, adj_id, adj_sub, params).tolist() == want
    plain = Sampler(temperature=0, presence_penalty=0, frequency_penalty=0)  # the runtime's numpy sampler
    assert [plain.sample(row) for row in rows[:4]] == want[:4]
