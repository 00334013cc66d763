"""RWKV-5.2 ("World"): ChatRWKV ``rwkv/model.py`` v5.2, the WKV5 scan with a per-channel decay."""
from ...registry import ModelSpec
from . import config, names

SPEC = ModelSpec("rwkv5", "RWKV-5.2", config.RWKV5Config, names, __name__)
