"""Weight quantization: modes, the packed group format (numpy, used by the runtime too) and the
module transform that applies the one policy of what is quantized (TVM, loaded on use)."""
from .modes import MODES, QuantMode, get_mode

__all__ = ["MODES", "QuantMode", "get_mode", "quantize_model"]


def __getattr__(name):
    if name == "quantize_model":
        from .transform import quantize_model
        return quantize_model
    raise AttributeError(name)
