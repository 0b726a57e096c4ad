"""Weight formats, plans, quantize-dequantize primitives, reversible application of a plan, sizes, export."""

from quantsense.quantization.apply import PlanApplier, apply_plan
from quantsense.quantization.fake_quant import fake_quantize, quantize_qparams, sqnr_db
from quantsense.quantization.formats import Format, GGUFFormat, QuantConfig, format_from_dict, parse_format
from quantsense.quantization.plan import BlockPlan, Plan
from quantsense.quantization.size import average_bits, model_bytes, storage_bits

__all__ = ["BlockPlan", "Format", "GGUFFormat", "Plan", "PlanApplier", "QuantConfig", "apply_plan", "average_bits",
           "fake_quantize", "format_from_dict", "model_bytes", "parse_format", "quantize_qparams", "sqnr_db",
           "storage_bits"]
