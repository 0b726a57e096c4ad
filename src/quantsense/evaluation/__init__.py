"""Run a model over tokenized data and compare quantized outputs with the FP32 reference.

Submodules are imported on first use (``statistics`` needs numpy only, ``batching`` and ``heads`` need torch).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Batch": "batching",
    "TokenBatches": "batching",
    "make_batches": "batching",
    "tokenize_texts": "batching",
    "EvalResult": "metrics",
    "compare_classification": "metrics",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"quantsense.evaluation.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'quantsense.evaluation' has no attribute {name!r}")
