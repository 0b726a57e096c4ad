"""The constants every part of quantsense agrees on, and the names users import most.

Formats and plans live in :mod:`quantsense.quantization` (``formats``, ``plan``); this module
re-exports them so ``from quantsense.config import Plan, QuantConfig`` keeps working.
"""

from __future__ import annotations

import os

from quantsense.quantization.formats import (
    GRANULARITIES,
    MAX_BITS,
    MIN_BITS,
    Format,
    QuantConfig,
    format_from_dict,
    parse_format,
)
from quantsense.quantization.plan import BlockPlan, Plan

REFERENCE_MODEL = "distilbert-base-uncased-finetuned-sst-2-english"
DEFAULT_STORE = os.path.join(os.path.expanduser("~"), ".cache", "quantsense", "results.sqlite")
DEFAULT_TASK = "sst2"
UNIT_KINDS = ("block", "linear")  # what a sweep or an allocation treats as one unit
VIEWS = ("only", "all_but")
LOSS_METRICS = ("kl", "loss")  # --rank-by and --objective: mean KL, or the task's own loss

__all__ = [
    "BlockPlan",
    "DEFAULT_STORE",
    "DEFAULT_TASK",
    "Format",
    "GRANULARITIES",
    "LOSS_METRICS",
    "MAX_BITS",
    "MIN_BITS",
    "Plan",
    "QuantConfig",
    "REFERENCE_MODEL",
    "UNIT_KINDS",
    "VIEWS",
    "format_from_dict",
    "parse_format",
]


def __getattr__(name: str):
    if name == "GGUFFormat":  # llama.cpp's legacy types, registered by its backend: the registry's entry
        from quantsense.quantization.formats import format_families

        return format_families()["gguf"]
    raise AttributeError(f"module 'quantsense.config' has no attribute {name!r}")
