"""RWKV-6 ("Finch", x060): ChatRWKV's ``RWKV`` v6.0, the WKV6 scan with a data-dependent
per-token decay and ddlerp token mixing."""
from ...registry import ModelSpec
from . import config, names

SPEC = ModelSpec("rwkv6", "RWKV-6", config.RWKV6Config, names, __name__)
