"""The unit of work is one plan's evaluation, described by plain data, so any executor can run it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol

from quantsense.engine.evaluator import Evaluator
from quantsense.evaluation.metrics import METRIC_VERSION, EvalResult
from quantsense.quantization.plan import Plan


@dataclass(frozen=True)
class WorkItem:
    """Everything needed to run and identify one evaluation, as plain strings."""

    label: str
    plan_json: str  # Plan.canonical_json()
    model_fp: str
    data_fp: str
    variant: str = ""  # a forward that differs from the plain one by float rounding (Evaluator.variant)

    @property
    def key(self) -> str:
        fields = {
            "model": self.model_fp,
            "data": self.data_fp,
            "plan": self.plan_json,
            "metric_version": METRIC_VERSION,
        }
        text = json.dumps({**fields, "forward": self.variant} if self.variant else fields, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def plan(self) -> Plan:
        return Plan.from_json_dict(json.loads(self.plan_json))


Lookup = Callable[[WorkItem], "EvalResult | None"]  # a finished result from elsewhere (the store), or None


class Executor(Protocol):
    def map(self, items: Iterable[WorkItem], lookup: Lookup | None = None) -> Iterator[tuple[WorkItem, EvalResult]]:
        """Run items, yielding each as it finishes (in any order). ``lookup`` is asked just before an item would
        start; what it returns is yielded instead of computing the item."""


class LocalExecutor:
    """Runs work items one after another in this process on an in-memory evaluator."""

    def __init__(self, evaluator: Evaluator):
        self.evaluator = evaluator

    def map(self, items: Iterable[WorkItem], lookup: Lookup | None = None) -> Iterator[tuple[WorkItem, EvalResult]]:
        for item in items:
            found = lookup(item) if lookup is not None else None
            yield item, (found if found is not None else self.run(item))

    def run(self, item: WorkItem) -> EvalResult:
        return self.evaluator.evaluate(item.plan())
