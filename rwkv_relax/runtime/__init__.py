"""Running compiled libraries: sequences in a runtime RNNState, weights from a checkpoint."""
from .model import CompiledModel, State, load_model

__all__ = ["CompiledModel", "State", "load_model"]
