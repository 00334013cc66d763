"""Weight quantization: modes, the one policy of what is quantized, the module transform and the
matching weight transform. See :mod:`.group_quant` for the packed format."""
from .modes import MODES, QuantMode, get_mode
from .transform import quantize_model

__all__ = ["MODES", "QuantMode", "get_mode", "quantize_model"]
