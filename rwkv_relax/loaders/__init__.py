"""Checkpoint readers, architecture detection, and the per-architecture name tables.

Flow: :func:`open_checkpoint` gives a lazy :class:`Checkpoint`; :func:`detect` says which
architecture and layout it holds; the architecture's table (``loaders/rwkv5.py``...) maps every
model parameter to its source tensors plus a named transform, and :func:`load_params` applies it.
"""
from .readers import Checkpoint, open_checkpoint
from .detect import detect
from .table import load_params, ParamSource

__all__ = ["Checkpoint", "open_checkpoint", "detect", "load_params", "ParamSource"]
