"""Weight formats, plans, quantize-dequantize primitives, reversible application of a plan, sizes, export.

Submodules are imported on first use (``from quantsense.quantization import Plan`` works), so reading
a plan or a format name does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PlanApplier": "apply",
    "apply_plan": "apply",
    "fake_quantize": "fake_quant",
    "quantize_qparams": "fake_quant",
    "sqnr_db": "fake_quant",
    "Format": "formats",
    "QuantConfig": "formats",
    "format_from_dict": "formats",
    "parse_format": "formats",
    "BlockPlan": "plan",
    "Plan": "plan",
    "average_bits": "size",
    "model_bytes": "size",
    "storage_bits": "size",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"quantsense.quantization.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'quantsense.quantization' has no attribute {name!r}")
