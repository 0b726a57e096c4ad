"""quantsense: layer-wise quantization sensitivity analysis for transformer models."""

from quantsense.config import Plan, QuantConfig
from quantsense.errors import QuantsenseError

__version__ = "0.1.0"
__all__ = ["Plan", "QuantConfig", "QuantsenseError", "__version__"]
