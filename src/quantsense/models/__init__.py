"""Load models (hub id, local directory, GGUF file) and discover their blocks and linear units.

Submodules are imported on first use, so a task can name its :class:`~quantsense.models.head.ModelHead` without torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "LoadedModel": "loading",
    "load_model": "loading",
    "resolve_device": "loading",
    "ModelHead": "head",
    "Unit": "units",
    "UnitMap": "units",
    "discover_units": "units",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"quantsense.models.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'quantsense.models' has no attribute {name!r}")
