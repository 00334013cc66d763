"""Quality cost of a quantization: mean KL divergence and top-1 agreement against a reference
model over the positions of a token sequence (teacher forcing)."""
from __future__ import annotations

import numpy as np


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def position_logits(model, tokens) -> np.ndarray:
    """(len(tokens), V) logits: the model's prediction after each prefix."""
    state = model.new_state()
    return np.stack([model.advance(state, [int(t)]) for t in tokens])


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """KL(reference || candidate) averaged over positions, and top-1 agreement."""
    lp, lq = log_softmax(reference), log_softmax(candidate)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    return {"mean_kl": float(kl.mean()), "max_kl": float(kl.max()),
            "top1": float((reference.argmax(-1) == candidate.argmax(-1)).mean()),
            "finite": bool(np.isfinite(candidate).all())}
