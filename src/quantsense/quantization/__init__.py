"""Quantize-dequantize primitives and reversible application of a plan to a model."""

from quantsense.quantization.apply import PlanApplier, apply_plan
from quantsense.quantization.fake_quant import (
    fake_quantize,
    quantize_qparams,
    sqnr_db,
    storage_bits,
)

__all__ = ["PlanApplier", "apply_plan", "fake_quantize", "quantize_qparams", "sqnr_db", "storage_bits"]
