"""Presets: the named plans a runtime ships (llama.cpp's ``Q4_K_M`` and the rest), registered by its backend.

A preset family (a :class:`PresetFamily` class registered with :func:`register_presets`) spells its names and gives
the plan a preset assigns a model on a workspace. The frontier measures a preset beside the allocations, and an
allocation can be given exactly a preset's size (:mod:`quantsense.search`); nothing here knows which runtime it is.
"""

from __future__ import annotations

from typing import ClassVar

from quantsense.errors import QuantsenseError


class PresetFamily:
    """One runtime's presets: ``runtime`` (for messages), ``names`` (canonical spellings), :meth:`plan`."""

    runtime: ClassVar[str]
    names: ClassVar[tuple[str, ...]]

    def plan(self, ws, name: str):
        """The :class:`~quantsense.quantization.plan.Plan` preset ``name`` gives the workspace's model."""
        raise NotImplementedError


PRESET_FAMILIES: list[type[PresetFamily]] = []


def register_presets(cls: type[PresetFamily]) -> type[PresetFamily]:
    """Add a runtime's presets to the registry (a decorator)."""
    PRESET_FAMILIES.append(cls)
    return cls


def _families() -> list[type[PresetFamily]]:
    from quantsense.quantization.formats.base import load_backends

    load_backends()
    return PRESET_FAMILIES


def _family(text) -> tuple[type[PresetFamily], str]:
    for family in _families():
        for name in family.names:
            if name.lower() == str(text).strip().lower():
                return family, name
    runtimes = " or ".join(f.runtime for f in _families()) or "registered"
    known = ", ".join(name for f in _families() for name in f.names)
    raise QuantsenseError(f"unknown {runtimes} preset {text!r}; use one of {known}")


def preset_name(text) -> str:
    """The preset's canonical name (``q4_k_m`` -> ``Q4_K_M``), or a QuantsenseError listing them."""
    return _family(text)[1]


def preset_plan(ws, preset: str):
    """The plan ``preset`` gives the workspace's model."""
    family, name = _family(preset)
    return family().plan(ws, name)
