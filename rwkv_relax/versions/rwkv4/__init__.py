"""RWKV-4 (Pile, Raven, World): ChatRWKV ``rwkv/model.py`` v4, the WKV4 scan with the max trick."""
from ...registry import ModelSpec
from . import config, names

SPEC = ModelSpec("rwkv4", "RWKV-4", config.RWKV4Config, names, __name__)
