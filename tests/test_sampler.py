"""Sampler: ChatRWKV's PIPELINE semantics (filters, temperature, penalties), seeds, stops, bans."""
from __future__ import annotations

import numpy as np
import pytest

from rwkv_relax.runtime.sampler import Sampler, SamplerError, StopStrings, chatrwkv_uncounted_ids, find_stop

V = 64  # vocab size of the synthetic logits


def random_logits(rng, n=V, scale=3.0):
    return (rng.standard_normal(n) * scale).astype(np.float32)


# ---- against ChatRWKV's own code ----------------------------------------------------------

@pytest.fixture
def chatrwkv_probs(monkeypatch):
    """ChatRWKV's ``PIPELINE.sample_logits`` (cpu branch), returning the distribution it draws from."""
    torch = pytest.importorskip("torch")
    utils = pytest.importorskip("rwkv.utils")
    captured = {}

    def fake_choice(a, p):
        captured["p"] = np.asarray(p, dtype=np.float64)
        return 0

    monkeypatch.setattr(utils.np.random, "choice", fake_choice)

    def probs(logits, **kwargs):
        utils.PIPELINE.sample_logits(None, torch.tensor(logits), **kwargs)
        return captured["p"]

    return probs


@pytest.mark.parametrize("temperature, top_p, top_k", [
    (1.0, 0.85, 0), (1.0, 0.5, 0), (0.7, 0.85, 0), (1.5, 0.3, 0), (1.0, 0.99, 5), (0.5, 0.0, 0),
    (2.0, 0.9, 1), (1.0, 0.6, 3),
])
def test_distribution_matches_chatrwkv(chatrwkv_probs, rng, temperature, top_p, top_k):
    sampler = Sampler(temperature=temperature, top_p=top_p, top_k=top_k)
    for _ in range(5):
        logits = random_logits(rng)
        theirs = chatrwkv_probs(logits, temperature=temperature, top_p=top_p, top_k=top_k)
        ours = sampler.probs(logits)
        assert np.array_equal(ours > 0, theirs > 0)  # same kept set
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


class _FakeModel:
    def __init__(self, logits):
        self.logits = logits

    def forward(self, tokens, state):
        import torch
        return torch.tensor(self.logits), state


class _Tok:  # the interface PIPELINE uses; its type name must not contain "Tokenizer"
    def __init__(self, tokens):
        self.tokens = tokens

    def encode(self, text):
        return [1]

    def decode(self, ids):
        return "".join(self.tokens[i] for i in ids)


def test_penalties_match_chatrwkv_generate(monkeypatch, rng):
    """Run ChatRWKV's ``PIPELINE.generate`` with a scripted token sequence and compare the
    logits it hands to its sampler, step by step, with ``Sampler.adjust``."""
    pytest.importorskip("torch")
    utils = pytest.importorskip("rwkv.utils")
    tokens = ["<eos>", "a", " ", "7", "12", "b", "c", "d"]  # " ", "7" and "12" count with weight 0
    logits = random_logits(rng, len(tokens))
    script = [1, 2, 1, 3, 4, 4, 5, 1, 2, 6, 1, 1, 7]
    seen = []

    def fake_sample_logits(self, out, temperature, top_p, top_k):
        seen.append(out.numpy().astype(np.float64).copy())
        return script[len(seen) - 1]

    monkeypatch.setattr(utils.PIPELINE, "sample_logits", fake_sample_logits)
    pipeline = utils.PIPELINE.__new__(utils.PIPELINE)
    pipeline.model, pipeline.tokenizer = _FakeModel(logits), _Tok(tokens)
    args = utils.PIPELINE_ARGS(alpha_presence=0.4, alpha_frequency=0.3, alpha_decay=0.9,
                               token_ban=[6], token_stop=[7])
    pipeline.generate("ctx", token_count=50, args=args)
    assert len(seen) == len(script)  # stopped at token 7

    uncounted = chatrwkv_uncounted_ids(lambda ids: pipeline.decode(ids).encode(), len(tokens))
    assert uncounted == {2, 3, 4}
    sampler = Sampler.from_pipeline_args(args, uncounted_ids=uncounted)
    for step, token in enumerate(script):
        np.testing.assert_allclose(sampler.adjust(logits), seen[step], rtol=1e-6, atol=1e-6)
        if sampler.is_stop_token(token):
            break
        sampler.accept(token)
    assert step == len(script) - 1


# ---- our own guarantees -------------------------------------------------------------------

def test_same_seed_same_tokens(rng):
    logits_seq = [random_logits(rng, scale=1.0) for _ in range(200)]

    def run(seed):
        sampler = Sampler(temperature=1.2, top_p=0.95, seed=seed)
        out = []
        for logits in logits_seq:
            token = sampler.sample(logits)
            sampler.accept(token)
            out.append(token)
        return out

    assert run(1234) == run(1234)
    assert run(1234) != run(4321)
    assert len(set(run(1234))) > 10  # really random, not collapsed to one token


def test_sample_does_not_change_state(rng):
    sampler = Sampler(seed=0)
    sampler.accept(3)
    logits = random_logits(rng)
    before = sampler.adjust(logits)
    sampler.sample(logits)
    np.testing.assert_array_equal(sampler.adjust(logits), before)


def test_temperature_zero_is_greedy(rng):
    for seed in range(3):
        sampler = Sampler(temperature=0, seed=seed)
        for _ in range(50):
            logits = random_logits(rng)
            token = sampler.sample(logits)
            assert token == int(np.argmax(sampler.adjust(logits)))
            sampler.accept(token)
    # with penalties, the greedy choice moves off a token that was just generated
    sampler = Sampler(temperature=0, presence_penalty=1.0, frequency_penalty=0.0)
    logits = np.zeros(V, np.float32)
    logits[5], logits[6] = 1.0, 0.5
    assert sampler.sample(logits) == 5
    sampler.accept(5)
    assert sampler.sample(logits) == 6


def test_top_k_one_is_argmax(rng):
    sampler = Sampler(temperature=1.5, top_p=1.0, top_k=1, presence_penalty=0, frequency_penalty=0,
                      seed=7)
    for _ in range(100):
        logits = random_logits(rng, scale=0.1)  # nearly flat: a real draw would wander
        assert sampler.sample(logits) == int(np.argmax(logits))


def test_small_top_p_picks_the_max(rng):
    sampler = Sampler(temperature=2.0, top_p=1e-6, seed=3)
    for _ in range(100):
        logits = random_logits(rng, scale=0.1)
        assert sampler.sample(logits) == int(np.argmax(logits))


def test_top_p_keeps_the_nucleus():
    p = np.array([0.5, 0.3, 0.15, 0.05])
    sampler = Sampler(top_p=0.7)
    np.testing.assert_allclose(sampler.probs(np.log(p)), [0.5 / 0.8, 0.3 / 0.8, 0, 0])
    assert np.all(Sampler(top_p=1.0).probs(np.log(p)) > 0)
    kept = Sampler(top_p=0.81).probs(np.log(p)) > 0  # the cumulative sum passes 0.81 at the 3rd
    assert kept.tolist() == [True, True, True, False]


def test_penalties_lower_repeats():
    """Flat logits: without penalties the next token repeats the previous one 1/V of the time;
    with them, recently generated tokens are pushed down."""
    logits = np.zeros(8, np.float32)

    def repeat_rate(**penalties):
        sampler = Sampler(top_p=1.0, seed=2024, **penalties)
        last, repeats, counts = None, 0, np.zeros(8)
        for _ in range(4000):
            token = sampler.sample(logits)
            repeats += token == last
            counts[token] += 1
            sampler.accept(token)
            last = token
        return repeats / 4000, counts

    free, _ = repeat_rate(presence_penalty=0, frequency_penalty=0)
    penalised, counts = repeat_rate(presence_penalty=0.5, frequency_penalty=2.0, penalty_decay=0.9)
    assert abs(free - 1 / 8) < 0.02
    assert penalised < 0.5 * free
    assert counts.min() > 0.1 * 4000  # penalties spread the draws, no token starves
    # exact value after two accepts: presence + decayed count * frequency
    sampler = Sampler(presence_penalty=0.2, frequency_penalty=0.3, penalty_decay=0.5)
    sampler.accept(3)
    sampler.accept(3)
    assert sampler.adjust(np.zeros(8))[3] == pytest.approx(-(0.2 + (0.5 + 1) * 0.3))
    sampler.reset()
    assert not sampler.adjust(np.zeros(8)).any()


def test_uncounted_ids_get_presence_only():
    sampler = Sampler(presence_penalty=0.2, frequency_penalty=0.3, uncounted_ids={4})
    for _ in range(3):
        sampler.accept(4)
    assert sampler.adjust(np.zeros(8))[4] == pytest.approx(-0.2)


def test_token_ban_never_sampled(rng):
    sampler = Sampler(temperature=1.0, top_p=1.0, token_ban=[3, 9, 10_000], seed=5)
    logits = random_logits(rng)
    logits[3] = logits[9] = 50.0  # would win every time
    draws = [sampler.sample(logits) for _ in range(1000)]
    assert not {3, 9} & set(draws)
    assert sampler.probs(logits)[[3, 9]].tolist() == [0.0, 0.0]
    assert Sampler(temperature=0, token_ban=[3, 9]).sample(logits) not in (3, 9)
    with pytest.raises(SamplerError, match="every token is banned"):
        Sampler(token_ban=range(V)).sample(logits)


def test_stop_tokens():
    sampler = Sampler(temperature=0, token_stop=[0, 42])
    logits = np.zeros(V, np.float32)
    logits[42] = 10
    token = sampler.sample(logits)
    assert token == 42 and sampler.is_stop_token(token) and not sampler.is_stop_token(41)


def test_stop_strings_across_pieces():
    stop = StopStrings(["\n\nUser:", "###"])
    out = [stop.put(piece) for piece in ["Hello", " there\n", "\nUs", "er: more", " ignored"]]
    assert out == ["Hello", " there", "", "", ""]  # "\n" held back, then the stop string hit
    assert stop.stopped and stop.flush() == ""

    stop = StopStrings(["\n\nUser:"])
    out = [stop.put(piece) for piece in ["a\n", "\nUs", "ual"]]
    assert "".join(out) == "a\n\nUsual" and not stop.stopped
    stop = StopStrings(["\n\nUser:"])
    assert stop.put("end\n\nUs") == "end" and stop.flush() == "\n\nUs"  # held tail released

    assert find_stop("abc###def\n\nUser:", ["\n\nUser:", "###"]) == 3
    assert find_stop("nothing here", ["###"]) is None


# ---- the fast path against the full sort it replaces ----------------------------------------

def full_sort_probs(sampler: Sampler, logits) -> np.ndarray:
    """The distribution as first written here: softmax, a stable argsort of the whole vocabulary,
    cumulative sum, top-p cutoff (ties kept), top-k, then softmax(z / T) over the kept tokens."""
    z = sampler.adjust(logits)
    if sampler.temperature == 0:
        p = np.zeros_like(z)
        p[int(np.argmax(z))] = 1.0
        return p
    p = np.exp(z - z.max())
    p /= p.sum()
    keep = np.ones(z.shape, dtype=bool)
    if sampler.top_p < 1:
        order = np.argsort(-p, kind="stable")
        cumulative = np.cumsum(p[order])
        cutoff = p[order[min(int(np.searchsorted(cumulative, sampler.top_p)), p.size - 1)]]
        keep &= p >= cutoff
    if 0 < sampler.top_k < p.size:
        keep[np.argsort(-p, kind="stable")[sampler.top_k:]] = False
    zt = np.where(keep, z / sampler.temperature, -np.inf)
    q = np.exp(zt - zt.max())
    return q / q.sum()


def full_sort_sample(sampler: Sampler, logits) -> int:
    p = full_sort_probs(sampler, logits)
    support = np.flatnonzero(p)
    cdf = np.cumsum(p[support])
    u = sampler.rng.random() * cdf[-1]
    return int(support[min(int(np.searchsorted(cdf, u, side="right")), support.size - 1)])


def awkward_logits(rng, n):
    """Gaussian logits of a random spread, often with ties (rounded) or far-out values."""
    logits = random_logits(rng, n, scale=float(rng.choice([0.01, 1.0, 2.0, 5.0, 30.0])))
    kind = rng.integers(4)
    if kind == 1:
        logits = np.round(logits)  # many ties, also at the top-p cutoff and the k-th value
    elif kind == 2:
        logits[rng.integers(0, n, n // 2)] = logits.max()  # a tie for the top
    elif kind == 3:
        logits[:] = 0.5  # flat
    return logits


@pytest.mark.parametrize("n", [7, V, 3000, 65536])
def test_probs_equal_the_full_sort_bit_for_bit(rng, n):
    """Every setting, many logits: probs() is exactly the full sort's distribution."""
    cases = 8 if n == 65536 else 150
    for _ in range(cases):
        settings = dict(temperature=float(rng.choice([0, 0.4, 1.0, 1.8])),
                        top_p=float(rng.choice([0, 1e-6, 0.3, 0.85, 0.9999, 1.0, 1.5])),
                        top_k=int(rng.choice([0, 0, 1, 3, 40, n - 1, n, n + 3])),
                        presence_penalty=float(rng.choice([0, 0.4])), frequency_penalty=float(rng.choice([0, 1.0])),
                        token_ban=rng.integers(0, n, int(rng.integers(0, 4))).tolist())
        sampler = Sampler(**settings)
        for token in rng.integers(0, n, int(rng.integers(0, 6))):
            sampler.accept(int(token))
        logits = awkward_logits(rng, n)
        want = full_sort_probs(sampler, logits)
        np.testing.assert_array_equal(sampler.probs(logits), want, err_msg=str(settings))


@pytest.mark.parametrize("settings", [dict(top_p=0.3, frequency_penalty=1.0), dict(top_p=0.85, temperature=0.7),
                                      dict(top_p=1.0), dict(top_p=0.9, top_k=20), dict(temperature=0)])
def test_seeded_draws_equal_the_full_sort(rng, settings):
    """Same seed: the fast sampler draws the very tokens the full sort draws, and again."""
    logits_seq = [awkward_logits(rng, 5000) for _ in range(60)]

    def run(draw):
        sampler = Sampler(seed=99, **settings)
        out = []
        for logits in logits_seq:
            out.append(draw(sampler, logits))
            sampler.accept(out[-1])
        return out

    fast = run(Sampler.sample)
    assert fast == run(full_sort_sample)
    assert fast == run(Sampler.sample)


def test_bad_settings():
    for kwargs, message in [({"temperature": -1}, "temperature"), ({"top_k": -2}, "top_k"),
                            ({"top_p": -0.1}, "top_p"), ({"penalty_decay": 1.5}, "penalty_decay")]:
        with pytest.raises(SamplerError, match=message):
            Sampler(**kwargs)
    with pytest.raises(SamplerError, match="NaN"):
        Sampler().sample(np.array([0.0, np.nan], np.float32))
