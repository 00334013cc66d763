"""The contract every compiled RWKV version keeps, run on every registered version.

The ``rnn`` fixture is parametrized over ``registry.VERSIONS``: a new version is tested here as
soon as it is registered. Each version's ``random.py`` gives its test checkpoint's shape
(``TEST_SHAPE``: no two dimensions equal, so a dropped transpose cannot hide), its state
tolerances against the reference (``STATE_ATOL``) and how the `rwkv` package runs it
(``CHATRWKV``).

References are objects with ``name``, ``forward(tokens, state) -> (logits (V,), state)`` (state
None: fresh; the state passed in stays untouched) and ``layer_state(state, layer, name)``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest

from rwkv_relax import load_model
from rwkv_relax.registry import VERSIONS, get_spec
from rwkv_relax.runtime.model import CompiledModel
from rwkv_relax.testing.reference import ChatRWKVProcess

TOL = 1e-4  # logits, max-abs, fp32 against a reference implementation
SELF_TOL = 1e-5  # logits, max-abs, one compiled library against itself (other batching/chunking)


@dataclasses.dataclass
class RNNUnderTest:
    arch: str  # the library's model_type
    shape: dict  # the generator's arguments for the "main" checkpoint
    library: Path
    model: CompiledModel
    references: Sequence[Any]
    state_atol: dict[str, float]  # per state entry: max-abs against the references' state


class ChatRWKV:
    """ChatRWKV's ``RWKV`` (the ``rwkv`` package, strategy 'cpu fp32') on a BlinkDL ``.pth``, in its
    own process (``RWKV_x070`` for RWKV-7: ``v7=True``).

    ``one_token_at_a_time``: feed sequences one token per call. rwkv 0.8.32's RWKV-4 ``att_seq``
    writes its (T, dim_att) WKV into the (T, n_embd) token-shift buffer, so it fails whenever
    dim_att != n_embd; ``att_one`` is the same arithmetic one token at a time.
    """

    name = "rwkv package"

    def __init__(self, path: Path, state_names: Sequence[str], v7: bool = False,
                 one_token_at_a_time: bool = False):
        self.model = ChatRWKVProcess(path, v7=v7)
        self.state_names = list(state_names)  # ChatRWKV's per-layer order is the library's
        self.one_token_at_a_time = one_token_at_a_time

    def forward(self, tokens, state=None):
        tokens = [int(t) for t in tokens]
        for chunk in ([[t] for t in tokens] if self.one_token_at_a_time else [tokens]):
            logits, state = self.model.forward(chunk, state)
        return logits, state

    def layer_state(self, state, layer: int, name: str) -> np.ndarray:
        return state[len(self.state_names) * layer + self.state_names.index(name)]


@pytest.fixture(scope="module", params=list(VERSIONS))
def rnn(request, factory):
    arch = request.param
    case = get_spec(arch).part("random")
    ckpt = factory.checkpoint(arch, "main", **case.TEST_SHAPE)
    library = factory.library(ckpt)
    model = load_model(library, ckpt)
    reference = ChatRWKV(ckpt, model.state_names, **case.CHATRWKV)
    yield RNNUnderTest(arch, case.TEST_SHAPE, library, model, [reference], case.STATE_ATOL)
    reference.model.close()


def _vocab(rnn: RNNUnderTest) -> int:
    return rnn.model.vocab_size


def _assert_same_state(a, b, n_layer: int, names: Sequence[str], atol: float = 0.0) -> None:
    for layer in range(n_layer):
        for name in names:
            np.testing.assert_allclose(a.layer(layer, name), b.layer(layer, name), atol=atol, rtol=0,
                                       err_msg=f"layer {layer} {name}")


@pytest.mark.parametrize("length", [1, 2, 17, 300])
def test_prefill_then_decode_matches_reference(rnn, rng, length):
    model, V = rnn.model, _vocab(rnn)
    tokens = rng.integers(0, V, length)
    ours, state = model.prefill(tokens)
    assert ours.shape == (V,) and ours.dtype == np.float32
    steps = rng.integers(0, V, 64 if length in (17, 300) else 8)
    logits = [ours]
    for token in steps:
        ours, state = model.decode(int(token), state)
        logits.append(ours)
    for ref in rnn.references:
        theirs, rstate = ref.forward(tokens)
        np.testing.assert_allclose(logits[0], theirs, atol=TOL, rtol=0, err_msg=f"{ref.name} prefill")
        for i, token in enumerate(steps):
            theirs, rstate = ref.forward([token], rstate)
            np.testing.assert_allclose(logits[i + 1], theirs, atol=TOL, rtol=0,
                                       err_msg=f"{ref.name} decode step {i}")


def test_state_carried_across_calls(rnn, rng):
    model, V = rnn.model, _vocab(rnn)
    a, b, c = (rng.integers(0, V, n) for n in (23, 1, 40))
    _, s = model.prefill(a)
    _, s = model.prefill(b, s)
    ours, s = model.prefill(c, s)
    assert s.length == 64
    for ref in rnn.references:
        theirs, rstate = ref.forward(np.concatenate([a, b, c]))
        np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0, err_msg=ref.name)
        # the references' own state layout (RWKV-5's att_kv: ChatRWKV keeps S[h, i, j] too)
        for layer in range(model.n_layer):
            for name in model.state_names:
                np.testing.assert_allclose(s.layer(layer, name), ref.layer_state(rstate, layer, name),
                                           atol=rnn.state_atol[name], rtol=0,
                                           err_msg=f"{ref.name} layer {layer} {name}")


def test_state_passed_in_is_not_modified(rnn, rng):
    model, V = rnn.model, _vocab(rnn)
    _, s = model.prefill(rng.integers(0, V, 9))
    before = {(i, n): s.layer(i, n).copy() for i in range(model.n_layer) for n in model.state_names}
    probe = rng.integers(0, V, 5)
    first, _ = model.prefill(probe, s)
    second, _ = model.prefill(probe, s)
    np.testing.assert_array_equal(first, second)
    for (i, n), value in before.items():
        np.testing.assert_array_equal(s.layer(i, n), value, err_msg=f"layer {i} {n}")


def test_chunked_prefill_equals_token_by_token(rnn, rng):
    model, V = rnn.model, _vocab(rnn)
    tokens = rng.integers(0, V, 120)
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
        np.testing.assert_allclose(out, tbt, atol=SELF_TOL, rtol=0, err_msg=f"chunks {chunks}")


def test_other_layouts_give_same_logits(factory, rnn, rng):
    """The same weights in each other file layout of the version (Hugging Face and its kin), as
    .safetensors and as a torch .bin, load into the same library with the same logits."""
    layouts = [layout.name for layout in get_spec(rnn.arch).names.LAYOUTS if layout.name != "blink"]
    assert layouts, f"{rnn.arch} has no layout besides BlinkDL's"
    tokens = rng.integers(0, _vocab(rnn), 31)
    want = rnn.model.prefill(tokens)[0]
    for layout in layouts:
        for suffix in (".safetensors", ".bin"):
            ckpt = factory.checkpoint(rnn.arch, "main", layout=layout, suffix=suffix, **rnn.shape)
            np.testing.assert_array_equal(load_model(rnn.library, ckpt).prefill(tokens)[0], want,
                                          err_msg=f"{layout} {suffix}")


def test_batch_prefill_and_decode_match_single_sequences(rnn, rng):
    model, V = rnn.model, _vocab(rnn)
    seqs = [rng.integers(0, V, n) for n in (5, 1, 33)]
    singles = [model.prefill(s) for s in seqs]
    logits, states = model.batch_prefill(seqs, [None] * 3)
    for (lg, _), blg in zip(singles, logits):
        np.testing.assert_allclose(blg, lg, atol=SELF_TOL, rtol=0)
    nxt = [int(t) for t in rng.integers(0, V, 3)]
    blogits, bstates = model.batch_decode(nxt, states)
    for i, (_, s) in enumerate(singles):
        lg, s2 = model.decode(nxt[i], s)
        np.testing.assert_allclose(blogits[i], lg, atol=SELF_TOL, rtol=0)
        for name in model.state_names:
            np.testing.assert_allclose(bstates[i].layer(1, name), s2.layer(1, name), rtol=1e-5,
                                       atol=1e-5, err_msg=name)
    # a continued batch prefill from carried states
    more = [rng.integers(0, V, n) for n in (4, 9)]
    logits, _ = model.batch_prefill(more, [singles[0][1], singles[2][1]])
    for i, (src, m) in enumerate(zip((singles[0][1], singles[2][1]), more)):
        np.testing.assert_allclose(logits[i], model.prefill(m, src)[0], atol=SELF_TOL, rtol=0)


def test_fork_continues_as_parent(rnn, rng):
    model, V = rnn.model, _vocab(rnn)
    _, parent = model.prefill(rng.integers(0, V, 12))
    child = model.fork(parent)
    for t in rng.integers(0, V, 6):
        a, parent = model.decode(int(t), parent)
        b, child = model.decode(int(t), child)
        np.testing.assert_array_equal(a, b)
    _assert_same_state(parent, child, model.n_layer, model.state_names)


def test_popn_restores_earlier_state(rnn, rng):
    model, V = rnn.model, _vocab(rnn)
    _, s0 = model.prefill(rng.integers(0, V, 8))
    _, s1 = model.decode(3, s0)
    _, s2 = model.decode(4, s1)
    _, s3 = model.decode(5, s2)
    back = model.rollback(s3, 2)
    assert back.length == s1.length
    _assert_same_state(back, s1, model.n_layer, model.state_names)
    np.testing.assert_array_equal(model.decode(9, back)[0], model.decode(9, s1)[0])
    with pytest.raises(Exception, match="roll back"):
        model.rollback(s3, 10)
