"""Checkpoint readers, file layouts, version detection and the name-table machinery.

Flow: :func:`open_checkpoint` gives a lazy :class:`Checkpoint`; :func:`detect` says which version
and layout it holds and returns it as a :class:`CanonicalView` (BlinkDL names); the version's
:class:`TensorTable` (``versions/<v>/names.py``) maps every model parameter to its source tensors
plus a named transform. Nothing here imports TVM or torch at import time.
"""
from .detect import detect
from .layouts import CanonicalView, Layout
from .readers import Checkpoint, open_checkpoint
from .table import ParamSource, TensorTable

__all__ = ["Checkpoint", "open_checkpoint", "CanonicalView", "Layout", "ParamSource", "TensorTable",
           "detect"]
