"""Candidate formats resolved once against a model: which formats can store which weights, and why not.

A format has shape rules (a 256-block K-quant needs rows that are multiples of 256; ONNX Runtime's int4 needs its
block to divide the input width). A sweep leaves out the (unit, format) pairs it cannot store, an allocation forbids
them, a uniform plan is skipped when any block linear misfits; each asks :class:`Candidates`, which checked every
module against every format once (:meth:`Candidates.resolve`), and says the format's own reason for a misfit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

from quantsense.errors import QuantsenseError
from quantsense.models.units import UnitMap
from quantsense.quantization.formats import Format


@dataclass(frozen=True)
class Candidates:
    """Formats in order (duplicates dropped) and, per (module name, format name) that does not fit, the format's reason."""

    formats: tuple[Format, ...]
    misfits: dict[tuple[str, str], str] = field(default_factory=dict)
    checked: frozenset[str] = frozenset()  # the module names every format was checked against

    @classmethod
    def resolve(cls, unit_map: UnitMap, formats: Iterable[Format] | Candidates) -> Candidates:
        """Every format checked against every unit of ``unit_map`` (its blocks' and those outside), once."""
        if isinstance(formats, Candidates):
            return formats
        formats = tuple(dict.fromkeys(formats))
        names = list(unit_map.units)
        misfits = {}
        for fmt in formats:
            for name in names:
                try:
                    fmt.check_unit(unit_map.get(name))
                except QuantsenseError as exc:
                    misfits[(name, fmt.name)] = str(exc)
        return cls(formats, misfits, frozenset(names))

    def __iter__(self) -> Iterator[Format]:
        return iter(self.formats)

    def __len__(self) -> int:
        return len(self.formats)

    def fits(self, names: Iterable[str], fmt: Format) -> bool:
        """Whether ``fmt`` can store every weight of the modules ``names``."""
        return all(self.why(name, fmt) is None for name in names)

    def why(self, name: str, fmt: Format) -> str | None:
        """The format's own reason it cannot store module ``name`` (None: it can)."""
        if name not in self.checked:
            raise QuantsenseError(f"unknown unit {name!r}: not a unit of the model these candidates were resolved for")
        return self.misfits.get((name, fmt.name))

    def first_misfit(self, names: Iterable[str], fmt: Format) -> str | None:
        """The reason for the first of ``names`` that ``fmt`` cannot store, or None when it stores them all."""
        return next((why for name in names if (why := self.why(name, fmt)) is not None), None)
