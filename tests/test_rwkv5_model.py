"""RWKV-5.2 compiled for llvm against ChatRWKV's `rwkv` package (strategy 'cpu fp32').

The tests themselves are the shared RNN contract (``tests/rnn_contract.py``), run on the ``rnn``
fixture below.
"""
from __future__ import annotations

import pytest

from rnn_contract import *  # noqa: F401,F403  the contract's tests, collected here
from rnn_contract import ChatRWKV, RNNUnderTest
from rwkv_relax import load_model

# Dimensions chosen so that no two of H, N, C, F, V coincide: a dropped transpose between two
# equal dims would otherwise go unnoticed.
SHAPE = dict(n_layer=3, n_embd=192, vocab_size=1536, head_size=64, dim_ffn=672, seed=5)
STATE_ATOL = {"att_x": 1e-5, "att_kv": 1e-4, "ffn_x": 1e-5}


@pytest.fixture(scope="module")
def rnn(factory):
    ckpt = factory.checkpoint("rwkv5", "main", **SHAPE)
    library = factory.library(ckpt)
    model = load_model(library, ckpt)
    return RNNUnderTest("rwkv5", SHAPE, library, model, [ChatRWKV(ckpt, model.state_names)], STATE_ATOL)
