"""Named load-time weight transforms. Each docstring says why the checkpoint differs from what
the compiled model reads. All compute in float32 (or float64 where noted) like ChatRWKV, through
torch where the reference rounds through torch (imported on use: the tables stay light)."""
from __future__ import annotations

import functools

import numpy as np


def identity(x: np.ndarray) -> np.ndarray:
    """Stored exactly as the model reads it."""
    return x


def squeeze_vector(x: np.ndarray) -> np.ndarray:
    """Time-mix vectors are stored (1, 1, C) for broadcasting in training; the model wants (C,)."""
    return x.reshape(-1)


def fold_ln0_into_embedding(emb: np.ndarray, ln0_w: np.ndarray, ln0_b: np.ndarray) -> np.ndarray:
    """blocks.0.ln0 only ever sees embedding rows, so ChatRWKV applies it to the table once at load
    (eps 1e-5, fp32, torch's layer_norm so rounding matches the reference)."""
    import torch
    t = torch.nn.functional.layer_norm(torch.from_numpy(emb).float(), (emb.shape[1],),
                                       weight=torch.from_numpy(ln0_w).float(),
                                       bias=torch.from_numpy(ln0_b).float())
    return t.numpy()


def decay_v5(time_decay: np.ndarray) -> np.ndarray:
    """RWKV-5 checkpoints store log(-log(w)); the scan multiplies the state by w = exp(-exp(.)),
    computed in fp32 as ChatRWKV does (fp16 would round w of slow heads to 1.0)."""
    import torch
    return torch.exp(-torch.exp(torch.from_numpy(time_decay).float())).numpy()


def decay_v4(time_decay: np.ndarray) -> np.ndarray:
    """RWKV-4 checkpoints store log(-w); the WKV4 recurrence adds w = -exp(.) in log space."""
    import torch
    return (-torch.exp(torch.from_numpy(time_decay).float())).numpy()


def as_float32(x: np.ndarray) -> np.ndarray:
    """Decay, bonus and ln_x stay fp32 whatever the model dtype (fp16 state overflows)."""
    return x.astype(np.float32)


def rescale_residual_weight(w: np.ndarray, divisor: float) -> np.ndarray:
    """With rescale_every = R, the residual stream is halved after every R-th layer to stay inside
    fp16 range; att.output and ffn.value of layer i are pre-divided by 2**(i // R) to match."""
    return w / divisor


def rescaled(layer: int, every: int):
    """``rescale_residual_weight`` bound to a layer (identity when rescaling is off)."""
    if not every:
        return identity
    return functools.partial(rescale_residual_weight, divisor=float(2 ** (layer // every)))


def lora_factor(w: np.ndarray) -> np.ndarray:
    """BlinkDL stores RWKV-7's LoRA factors as plain matrices applied as ``x @ W`` (w1: (C, D),
    w2: (D, C)); the model applies them as linear layers, ``x @ W.T``, so that they run through
    the same matmul schedule as the big projections (weight rows contiguous along the reduction)."""
    return np.ascontiguousarray(w.T)


def squeeze_float32(x: np.ndarray) -> np.ndarray:
    """Per-channel biases and scales that feed fp32 math (decay, rates, the L2-normalised key) are
    stored (1, 1, C) or (H, N); the model reads them flat, in fp32 whatever the model dtype."""
    return x.reshape(-1).astype(np.float32)


def stacked_lora_factor(block: int):
    """RWKV-6's token-mix LoRA stacks its five up-projections in one (5, D, C) tensor, in the order
    w, k, v, r, g; the model applies each as its own linear layer (C, D), so that they run through
    the same 2-D matmul schedule as every other projection (no batched matmul to schedule)."""
    def take(w: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(w[block].T)
    take.__name__ = take.__qualname__ = f"stacked_lora_factor_{block}"
    take.__doc__ = stacked_lora_factor.__doc__
    return take


def state_value_key_to_key_value(s: np.ndarray) -> np.ndarray:
    """A state-tuned RWKV-6 file's ``att.time_state`` is (H, value, key), the training kernel's
    layout; the library's WKV6 state is (H, key, value), the ``rwkv`` package's (which loads the
    file with the same ``transpose(1, 2)``)."""
    return np.ascontiguousarray(np.swapaxes(s, 1, 2)).astype(np.float32)
