"""RWKV-5.2 compiled for llvm against ChatRWKV's `rwkv` package (strategy 'cpu fp32')."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rwkv_relax import load_model
from rwkv_relax.testing.reference import reference_model

# Dimensions chosen so that no two of H, N, C, F, V coincide: a dropped transpose between two
# equal dims would otherwise go unnoticed.
SHAPE = dict(n_layer=3, n_embd=192, vocab_size=1536, head_size=64, dim_ffn=672, seed=5)
TOL = 1e-4


@pytest.fixture(scope="module")
def v5(factory):
    ckpt = factory.checkpoint("rwkv5", "main", **SHAPE)
    return load_model(factory.library(ckpt), ckpt), reference_model(ckpt)


def ref_logits(ref, tokens, state=None):
    logits, state = ref.forward(list(map(int, tokens)), state)
    return logits.numpy(), state


@pytest.mark.parametrize("length", [1, 2, 17, 300])
def test_prefill_then_decode_matches_reference(v5, rng, length):
    model, ref = v5
    tokens = rng.integers(0, SHAPE["vocab_size"], length)
    ours, state = model.prefill(tokens)
    theirs, rstate = ref_logits(ref, tokens)
    assert ours.shape == (SHAPE["vocab_size"],) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0)
    steps = 64 if length in (17, 300) else 8
    for token in rng.integers(0, SHAPE["vocab_size"], steps):
        ours, state = model.decode(int(token), state)
        theirs, rstate = ref_logits(ref, [token], rstate)
        np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0)


def test_state_carried_across_calls(v5, rng):
    model, ref = v5
    a, b, c = (rng.integers(0, SHAPE["vocab_size"], n) for n in (23, 1, 40))
    _, s = model.prefill(a)
    _, s = model.prefill(b, s)
    ours, s = model.prefill(c, s)
    theirs, _ = ref_logits(ref, np.concatenate([a, b, c]))
    np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0)
    assert s.length == 64
    # the reference's own state layout: att_x, att_kv (transposed: ChatRWKV keeps S[h, i, j] too)
    _, rstate = ref_logits(ref, np.concatenate([a, b, c]))
    for layer in range(SHAPE["n_layer"]):
        np.testing.assert_allclose(s.layer(layer, "att_x"), rstate[3 * layer].numpy(), atol=1e-5)
        np.testing.assert_allclose(s.layer(layer, "att_kv"), rstate[3 * layer + 1].numpy(), atol=1e-4)
        np.testing.assert_allclose(s.layer(layer, "ffn_x"), rstate[3 * layer + 2].numpy(), atol=1e-5)


def test_state_passed_in_is_not_modified(v5, rng):
    model, _ = v5
    _, s = model.prefill(rng.integers(0, SHAPE["vocab_size"], 9))
    before = [s.layer(i, "att_kv").copy() for i in range(SHAPE["n_layer"])]
    probe = rng.integers(0, SHAPE["vocab_size"], 5)
    first, _ = model.prefill(probe, s)
    second, _ = model.prefill(probe, s)
    np.testing.assert_array_equal(first, second)
    for i in range(SHAPE["n_layer"]):
        np.testing.assert_array_equal(s.layer(i, "att_kv"), before[i])


def test_chunked_prefill_equals_token_by_token(v5, rng):
    model, _ = v5
    tokens = rng.integers(0, SHAPE["vocab_size"], 120)
    state = None
    for t in tokens:
        tbt, state = model.prefill([int(t)], state)
    for chunks in ([120], [1, 119], [7, 13, 100], [64, 56], list(rng.integers(1, 9, 30))):
        bounds = np.cumsum([0] + list(chunks))
        bounds = bounds[bounds <= 120]
        if bounds[-1] != 120:
            bounds = np.append(bounds, 120)
        state = None
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            out, state = model.prefill(tokens[lo:hi], state)
        np.testing.assert_allclose(out, tbt, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout,suffix", [("hf", ".safetensors"), ("hf", ".bin")])
def test_hf_layout_gives_same_logits(factory, v5, rng, layout, suffix):
    model, _ = v5
    ckpt = factory.checkpoint("rwkv5", "main", layout=layout, suffix=suffix, **SHAPE)
    hf = load_model(factory.library(factory.checkpoint("rwkv5", "main", **SHAPE)), ckpt)
    tokens = rng.integers(0, SHAPE["vocab_size"], 31)
    np.testing.assert_array_equal(hf.prefill(tokens)[0], model.prefill(tokens)[0])


def test_batch_prefill_and_decode_match_single_sequences(v5, rng):
    model, _ = v5
    seqs = [rng.integers(0, SHAPE["vocab_size"], n) for n in (5, 1, 33)]
    singles = [model.prefill(s) for s in seqs]
    logits, states = model.batch_prefill(seqs, [None] * 3)
    for (lg, _), blg in zip(singles, logits):
        np.testing.assert_allclose(blg, lg, atol=1e-5, rtol=0)
    nxt = [int(t) for t in rng.integers(0, SHAPE["vocab_size"], 3)]
    blogits, bstates = model.batch_decode(nxt, states)
    for i, (_, s) in enumerate(singles):
        lg, s2 = model.decode(nxt[i], s)
        np.testing.assert_allclose(blogits[i], lg, atol=1e-5, rtol=0)
        np.testing.assert_allclose(bstates[i].layer(1, "att_kv"), s2.layer(1, "att_kv"), rtol=1e-5, atol=1e-5)
    # a continued batch prefill from carried states
    more = [rng.integers(0, SHAPE["vocab_size"], n) for n in (4, 9)]
    logits, _ = model.batch_prefill(more, [singles[0][1], singles[2][1]])
    for i, (src, m) in enumerate(zip((singles[0][1], singles[2][1]), more)):
        np.testing.assert_allclose(logits[i], model.prefill(m, src)[0], atol=1e-5, rtol=0)


def test_fork_continues_as_parent(v5, rng):
    model, _ = v5
    _, parent = model.prefill(rng.integers(0, SHAPE["vocab_size"], 12))
    child = model.fork(parent)
    for t in rng.integers(0, SHAPE["vocab_size"], 6):
        a, parent = model.decode(int(t), parent)
        b, child = model.decode(int(t), child)
        np.testing.assert_array_equal(a, b)


def test_popn_restores_earlier_state(v5, rng):
    model, _ = v5
    _, s0 = model.prefill(rng.integers(0, SHAPE["vocab_size"], 8))
    _, s1 = model.decode(3, s0)
    _, s2 = model.decode(4, s1)
    _, s3 = model.decode(5, s2)
    back = model.rollback(s3, 2)
    assert back.length == s1.length
    for i in range(SHAPE["n_layer"]):
        np.testing.assert_array_equal(back.layer(i, "att_kv"), s1.layer(i, "att_kv"))
    np.testing.assert_array_equal(model.decode(9, back)[0], model.decode(9, s1)[0])
    with pytest.raises(Exception, match="roll back"):
        model.rollback(s3, 10)
