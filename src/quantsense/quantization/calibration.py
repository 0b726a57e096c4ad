"""Calibration statistics that formats weight their rounding by, registered by the runtime that defines them.

llama.cpp's importance matrix (``--imatrix``: the mean squared input per column of every linear) is the one there is;
its backend registers it (:class:`~quantsense.backends.llama_cpp.imatrix.ImatrixCalibration`). A workspace asks this
registry to check and load the file a user passes, to name the modules it records, and to collect the statistic on
its own data; a format bound to one (``fmt.with_imatrix``) knows what to do with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from quantsense.errors import QuantsenseError


class Calibration:
    """One kind of calibration statistic: its file (checked before work, loaded for a model) and its collection."""

    kind: ClassVar[str]  # the option that names its file ("imatrix")

    def check_path(self, path) -> Path:
        """The file ``path`` names, refused in one line when it is missing or not this kind's file."""
        raise NotImplementedError

    def load(self, path, model, units):
        """The statistic in ``path`` for ``model``'s units (refused when it does not fit them)."""
        raise NotImplementedError

    def modules(self, model, units) -> dict:
        """Unit name -> the module whose input the statistic records for it."""
        raise NotImplementedError

    def collect(self, model, modules: dict, inputs):
        """The statistic gathered on ``inputs`` (batches of model inputs) for ``modules``."""
        raise NotImplementedError


CALIBRATIONS: dict[str, type[Calibration]] = {}


def register_calibration(cls: type[Calibration]) -> type[Calibration]:
    """Add a calibration kind to the registry (a decorator)."""
    CALIBRATIONS[cls.kind] = cls
    return cls


def calibration(kind: str = "imatrix") -> Calibration:
    """The registered calibration ``kind``."""
    from quantsense.quantization.formats.base import load_backends

    load_backends()
    if kind not in CALIBRATIONS:
        raise QuantsenseError(
            f"no runtime registers a {kind!r} calibration; known: {', '.join(CALIBRATIONS) or 'none'}"
        )
    return CALIBRATIONS[kind]()
