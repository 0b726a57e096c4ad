"""Quantization schemes and plans.

A :class:`QuantConfig` describes how one weight tensor is quantized; a :class:`Plan` maps unit
names (module paths such as ``bert.encoder.layer.3.attention.self.query``) to configs. Plans
round-trip through JSON so that a user can write or edit one by hand; unknown keys are errors.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from quantsense.errors import QuantsenseError

GRANULARITIES = ("per_tensor", "per_channel", "per_group")
MIN_BITS, MAX_BITS = 2, 8


@dataclass(frozen=True)
class QuantConfig:
    """Round-to-nearest integer weight quantization.

    bits: 2..8. symmetric: zero point 0 (else an integer zero point per scale).
    granularity: one scale per tensor, per output channel (row of ``nn.Linear.weight``) or per group
    of ``group_size`` consecutive input features within a row.
    """

    bits: int
    symmetric: bool = True
    granularity: str = "per_channel"
    group_size: int | None = None

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise QuantsenseError(f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {self.bits!r}")
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise QuantsenseError(f"bits must be in {MIN_BITS}..{MAX_BITS}, got {self.bits}")
        if not isinstance(self.symmetric, bool):
            raise QuantsenseError(f"symmetric must be true or false, got {self.symmetric!r}")
        if self.granularity not in GRANULARITIES:
            raise QuantsenseError(
                f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}"
            )
        if self.granularity == "per_group":
            if not isinstance(self.group_size, int) or isinstance(self.group_size, bool) or self.group_size < 1:
                raise QuantsenseError(f"per_group needs a positive integer group_size, got {self.group_size!r}")
        elif self.group_size is not None:
            raise QuantsenseError(f"group_size is only valid with granularity per_group, got {self.granularity}")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    def label(self) -> str:
        """A short human label such as ``int4`` or ``int4-asym-g128``."""
        text = f"int{self.bits}"
        if not self.symmetric:
            text += "-asym"
        if self.granularity == "per_tensor":
            text += "-tensor"
        elif self.granularity == "per_group":
            text += f"-g{self.group_size}"
        return text

    def to_dict(self) -> dict:
        data = asdict(self)
        if data["group_size"] is None:
            del data["group_size"]
        return data

    @classmethod
    def from_dict(cls, data: dict, where: str = "config") -> "QuantConfig":
        if not isinstance(data, dict):
            raise QuantsenseError(f"{where}: expected an object with 'bits', got {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise QuantsenseError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        if "bits" not in data:
            raise QuantsenseError(f"{where}: missing required key 'bits'")
        return cls(**data)

    def replace(self, **changes) -> "QuantConfig":
        data = asdict(self)
        data.update(changes)
        return QuantConfig(**data)


@dataclass(frozen=True)
class Plan:
    """Unit name -> QuantConfig. Units not named stay in full precision."""

    assignments: tuple[tuple[str, QuantConfig], ...] = ()

    @classmethod
    def of(cls, mapping: dict[str, QuantConfig]) -> "Plan":
        return cls(tuple(sorted(mapping.items())))

    def as_dict(self) -> dict[str, QuantConfig]:
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
        return {"version": 1, "units": {name: cfg.to_dict() for name, cfg in self.assignments}}

    def canonical_json(self) -> str:
        """A stable text form: equal plans give equal strings (used in content keys)."""
        return json.dumps(self.to_json_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json_dict(cls, data, where: str = "plan") -> "Plan":
        if not isinstance(data, dict):
            raise QuantsenseError(f"{where}: expected a JSON object with 'units', got {type(data).__name__}")
        unknown = sorted(set(data) - {"version", "units", "blocks", "meta"})
        if unknown:
            raise QuantsenseError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: version, units, blocks, meta")
        if data.get("version", 1) != 1:
            raise QuantsenseError(f"{where}: unsupported plan version {data.get('version')!r} (this quantsense reads 1)")
        units = data.get("units", {})
        if not isinstance(units, dict):
            raise QuantsenseError(f"{where}: 'units' must map unit names to configs")
        blocks = data.get("blocks", {})
        if not isinstance(blocks, dict):
            raise QuantsenseError(f"{where}: 'blocks' must map block indices to configs")
        mapping = {name: QuantConfig.from_dict(cfg, f"{where}: unit {name}") for name, cfg in units.items()}
        block_cfgs = {}
        for key, cfg in blocks.items():
            try:
                index = int(key)
            except ValueError:
                raise QuantsenseError(f"{where}: block key {key!r} is not an integer index") from None
            block_cfgs[index] = QuantConfig.from_dict(cfg, f"{where}: block {key}")
        plan = cls.of(mapping)
        if block_cfgs:
            return BlockPlan(plan, block_cfgs)  # resolved against a model later
        return plan

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Plan | BlockPlan":
        path = Path(path)
        if not path.is_file():
            raise QuantsenseError(f"plan file {path} does not exist; write one with 'quantsense allocate' or by hand")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise QuantsenseError(f"plan file {path} is not valid JSON: {exc}") from None
        return cls.from_json_dict(data, where=f"plan file {path}")


@dataclass(frozen=True)
class BlockPlan:
    """A plan whose entries are block indices, resolved to unit names once a model is known."""

    units: Plan
    blocks: dict

    def resolve(self, block_units: list[list[str]]) -> Plan:
        mapping = self.units.as_dict()
        for index, cfg in self.blocks.items():
            if not 0 <= index < len(block_units):
                raise QuantsenseError(f"block index {index} is out of range: the model has blocks 0..{len(block_units) - 1}")
            for name in block_units[index]:
                mapping.setdefault(name, cfg)
        return Plan.of(mapping)
