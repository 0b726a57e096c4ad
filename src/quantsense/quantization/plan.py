"""Plans: unit name -> weight format, round-tripping through JSON so a user can write or edit one by hand.

A :class:`Plan` maps unit names (module paths such as ``bert.encoder.layer.3.attention.self.query``)
to formats; units not named stay in full precision. A plan file may also name whole blocks
(``"blocks": {"3": {"format": "q4_0"}}``): that is a :class:`BlockPlan`, resolved once the model's
blocks are known. Unknown keys are errors that name the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from quantsense.errors import QuantsenseError
from quantsense.quantization.formats import Format, format_from_dict

PLAN_VERSION = 1


@dataclass(frozen=True)
class Plan:
    """Unit name -> format. Units not named stay in full precision."""

    assignments: tuple[tuple[str, Format], ...] = ()

    @classmethod
    def of(cls, mapping: dict[str, Format]) -> "Plan":
        return cls(tuple(sorted(mapping.items())))

    def as_dict(self) -> dict[str, Format]:
        return dict(self.assignments)

    def __len__(self) -> int:
        return len(self.assignments)

    def __bool__(self) -> bool:
        return bool(self.assignments)

    def units(self) -> list[str]:
        return [name for name, _ in self.assignments]

    def merged(self, other: "Plan") -> "Plan":
        data = self.as_dict()
        data.update(other.as_dict())
        return Plan.of(data)

    def to_json_dict(self) -> dict:
        return {"version": PLAN_VERSION, "units": {name: fmt.to_dict() for name, fmt in self.assignments}}

    def canonical_json(self) -> str:
        """A stable text form: equal plans give equal strings (used in content keys)."""
        return json.dumps(self.to_json_dict(), sort_keys=True, separators=(",", ":"))

    def format_counts(self) -> dict[str, int]:
        """How many units use each format, e.g. {"q4_0": 120, "q8_0": 30}."""
        counts: dict[str, int] = {}
        for _, fmt in self.assignments:
            counts[fmt.name] = counts.get(fmt.name, 0) + 1
        return dict(sorted(counts.items()))

    @classmethod
    def from_json_dict(cls, data, where: str = "plan") -> "Plan | BlockPlan":
        if not isinstance(data, dict):
            raise QuantsenseError(
                f"{where}: expected a JSON object with 'units' or 'blocks', got {type(data).__name__}"
            )
        unknown = sorted(set(data) - {"version", "units", "blocks", "meta"})
        if unknown:
            raise QuantsenseError(
                f"{where}: unknown key(s) {', '.join(unknown)}; allowed: version, units, blocks, meta"
            )
        if data.get("version", PLAN_VERSION) != PLAN_VERSION:
            raise QuantsenseError(
                f"{where}: unsupported plan version {data.get('version')!r} (this quantsense reads {PLAN_VERSION})"
            )
        units = data.get("units", {})
        if not isinstance(units, dict):
            raise QuantsenseError(f"{where}: 'units' must map unit names to formats")
        blocks = data.get("blocks", {})
        if not isinstance(blocks, dict):
            raise QuantsenseError(f"{where}: 'blocks' must map block indices to formats")
        mapping = {name: format_from_dict(cfg, f"{where}: unit {name}") for name, cfg in units.items()}
        block_formats = {}
        for key, cfg in blocks.items():
            try:
                index = int(key)
            except ValueError:
                raise QuantsenseError(f"{where}: block key {key!r} is not an integer index") from None
            block_formats[index] = format_from_dict(cfg, f"{where}: block {key}")
        plan = cls.of(mapping)
        if block_formats:
            return BlockPlan(plan, block_formats, where)
        return plan

    def save(self, path: str | Path) -> None:
        from quantsense.io import write_json

        write_json(Path(path), self.to_json_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Plan | BlockPlan":
        from quantsense.io import read_json

        data = read_json(
            path,
            f"plan file {path} does not exist; write one with 'quantsense allocate' or by hand",
            "fix the plan file or write it again with 'quantsense allocate'",
        )
        return cls.from_json_dict(data, where=f"plan file {path}")


@dataclass(frozen=True)
class BlockPlan:
    """A plan whose entries are block indices, resolved to unit names once a model is known."""

    units: Plan
    blocks: dict
    where: str = "plan"

    def resolve(self, block_units: list[list[str]]) -> Plan:
        mapping = self.units.as_dict()
        for index, fmt in self.blocks.items():
            if not 0 <= index < len(block_units):
                raise QuantsenseError(
                    f"{self.where}: block index {index} is out of range: the model has blocks 0..{len(block_units) - 1}"
                )
            for name in block_units[index]:
                mapping.setdefault(name, fmt)
        return Plan.of(mapping)
