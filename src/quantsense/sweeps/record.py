"""What a sweep did and what it cost, as typed records: the ``sweep`` of a sensitivity or frontier result.

Three shapes, one per way of measuring: :class:`ExhaustiveRecord` (every row or (unit, format) pair on all the data),
:class:`SequentialRecord` (each unit on as many data segments as its tier needs, :mod:`quantsense.sweeps.sequential`)
and :class:`ReducedRecord` (an allocation's losses partly measured, partly estimated,
:mod:`quantsense.mixed_precision.reduced`). results.json holds :meth:`SweepRecord.to_dict` (with its ``mode``);
:func:`sweep_record` reads it back, so the report reads fields, never string keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar


@dataclass(kw_only=True)
class SweepRecord:
    mode: ClassVar[str]
    token_evaluations: int  # input tokens run through the model, the FP32 reference included
    full_token_evaluations: int  # what measuring everything on all the data would have cost
    seconds: float = 0.0
    skipped: list[str] | None = None  # sensitivity: 'unit@format' pairs the format cannot store, left out
    embedding: dict | None = None  # frontier: --embedding's table measured alone (in every allocation's prediction)

    @property
    def share(self) -> float:
        """Token evaluations spent, in % of a full sweep's."""
        return 100 * self.token_evaluations / self.full_token_evaluations

    def to_dict(self) -> dict:
        """The results.json form: ``mode`` and every field that was set."""
        return {"mode": self.mode, **{k: v for k, v in asdict(self).items() if v is not None}}


@dataclass(kw_only=True)
class ExhaustiveRecord(SweepRecord):
    mode: ClassVar[str] = "exhaustive"
    evaluations: int | None = None  # sensitivity: rows measured
    pairs: int | None = None  # allocation: (unit, format) pairs, all measured
    measured: int | None = None
    estimated: int | None = None


@dataclass(kw_only=True)
class SequentialRecord(SweepRecord):
    mode: ClassVar[str] = "sequential"
    evaluations: int  # rows of the sensitivity result
    segments: int
    stopped_early: int  # rows measured on fewer than all the segments
    sequential_rows: int | None = None  # of which measured sequentially (the ``only`` view; None: all of them)
    reference_tokens: int | None = None


@dataclass(kw_only=True)
class ReducedRecord(SweepRecord):
    mode: ClassVar[str] = "reduced"
    estimate: str = "weight-error"  # how unmeasured pairs are estimated: "weight-error" or "fisher"
    pairs: int
    measured: int
    estimated: int
    reference_tokens: int | None = None
    segments: int
    screen_tokens: int  # the first segment's tokens (every unit's first measurement, every plan check)
    deeper: int  # pairs measured on more than one segment
    plan_checks: int
    plan_check_tokens: int | None = None
    anchor: str  # the format every unit is measured in
    second: str | None = None
    alpha: float  # the loss model's exponent
    always_measured: int = 0  # pairs in formats that quantize activations, which no weight error predicts
    agreement: dict  # the loss model against the pairs it predicted before they were measured
    rounds: list[dict] = field(default_factory=list)
    estimated_pairs: list[str] = field(default_factory=list)  # 'unit@format' of every estimated pair


SHAPES: dict[str, type[SweepRecord]] = {c.mode: c for c in (ExhaustiveRecord, SequentialRecord, ReducedRecord)}


def sweep_record(data: dict | SweepRecord | None) -> SweepRecord | None:
    """The typed record of a results.json ``sweep`` (None when the result has none); a record is returned as is."""
    if data is None or isinstance(data, SweepRecord):
        return data
    if not data:
        return None
    shape = SHAPES[data["mode"]]
    known = {f.name for f in fields(shape)}
    return shape(**{k: v for k, v in data.items() if k in known})
