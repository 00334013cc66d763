"""RWKV-7 ("Goose", x070): ChatRWKV's ``RWKV_x070``, the WKV7 scan with a data-dependent decay and
an in-context learning rate (a rank-1 "delta rule" update of the state)."""
from ...registry import ModelSpec
from . import config, names

SPEC = ModelSpec("rwkv7", "RWKV-7", config.RWKV7Config, names, __name__)
