"""The `rwkv` package (ChatRWKV's model code) as the numerical reference."""
from __future__ import annotations

import os
from pathlib import Path


def reference_model(pth: str | Path, strategy: str = "cpu fp32"):
    """ChatRWKV ``RWKV`` on a BlinkDL ``.pth``; its env switches must be set before import."""
    os.environ.setdefault("RWKV_JIT_ON", "1")
    os.environ.setdefault("RWKV_CUDA_ON", "0")
    os.environ.setdefault("RWKV_V7_ON", "0")
    from rwkv.model import RWKV  # pylint: disable=import-outside-toplevel
    return RWKV(model=str(pth), strategy=strategy, verbose=False)
