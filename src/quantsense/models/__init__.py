"""Load models (hub id, local directory, GGUF file) and discover their blocks and linear units."""

from quantsense.models.loading import LoadedModel, load_model, resolve_device
from quantsense.models.units import Unit, UnitMap, discover_units

__all__ = ["LoadedModel", "Unit", "UnitMap", "discover_units", "load_model", "resolve_device"]
