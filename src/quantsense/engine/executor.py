"""The unit of work is one plan's evaluation, described by plain data, so any executor can run it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Iterable, Iterator, Protocol

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
        fields = {"model": self.model_fp, "data": self.data_fp, "plan": self.plan_json, "metric_version": METRIC_VERSION}
        text = json.dumps({**fields, "forward": self.variant} if self.variant else fields, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def plan(self) -> Plan:
        return Plan.from_json_dict(json.loads(self.plan_json))


class Executor(Protocol):
    def map(self, items: Iterable[WorkItem]) -> Iterator[tuple[WorkItem, EvalResult]]:
        """Run items, yielding each as it finishes (in any order)."""


class LocalExecutor:
    """Runs work items one after another in this process on an in-memory evaluator."""

    def __init__(self, evaluator: Evaluator):
        self.evaluator = evaluator

    def map(self, items: Iterable[WorkItem]) -> Iterator[tuple[WorkItem, EvalResult]]:
        for item in items:
            yield item, self.evaluator.evaluate(item.plan())
