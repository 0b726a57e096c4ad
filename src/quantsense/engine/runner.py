"""Engine: turn (label, plan) pairs into results, from the store when finished before, else computed.

Each finished evaluation is committed to the store at once, so an interrupted sweep loses at most
the evaluation in flight and the same command resumes where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from quantsense.engine.executor import LocalExecutor, WorkItem
from quantsense.errors import QuantsenseError
from quantsense.evaluation.metrics import EvalResult
from quantsense.quantization.plan import Plan
from quantsense.store import ResultStore


@dataclass
class RunStats:
    from_store: int = 0
    stored_seconds: float = 0.0  # what the evaluations taken from the store cost when first computed
    computed: int = 0
    seconds: float = 0.0


class Engine:
    def __init__(
        self,
        evaluator,
        model_fp: str,
        data_fp: str,
        store: ResultStore | None = None,
        executor=None,
        fresh: bool = False,
        quiet: bool = False,
        valid: Callable[[dict], bool] | None = None,
    ):
        """``valid(arrays)`` says whether stored arrays fit this evaluation; a row that does not is recomputed."""
        self.evaluator = evaluator
        self.valid = valid
        self.model_fp = model_fp
        self.data_fp = data_fp
        self.store = store
        self.executor = executor or LocalExecutor(evaluator)
        self.fresh = fresh
        self.quiet = quiet
        self.stats = RunStats()
        self._memo: dict[str, EvalResult] = {}

    def item(self, label: str, plan: Plan) -> WorkItem:
        return WorkItem(
            label=label,
            plan_json=plan.canonical_json(),
            model_fp=self.model_fp,
            data_fp=self.data_fp,
            variant=self.evaluator.variant,
        )

    def _from_store(self, item: WorkItem) -> EvalResult | None:
        """A finished evaluation from the store (counted in the stats), or None."""
        if self.store is None or self.fresh:
            return None
        found = self.store.fetch(item.key, validate=self.valid)  # a row of the wrong shape is recomputed, never trusted
        if found is None:
            return None
        arrays, seconds = found
        self.stats.from_store += 1
        self.stats.stored_seconds += seconds
        return EvalResult(arrays)

    def _save(self, item: WorkItem, result: EvalResult, seconds: float) -> None:
        bad = [k for k, v in result.arrays.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
        if bad:
            raise QuantsenseError(
                f"evaluation {item.label} produced NaN or infinite {', '.join(bad)} (the model overflows "
                "in this format or dtype); nothing was stored: try --dtype float32 or another format"
            )
        self._memo[item.key] = result
        if self.store is not None:
            meta = {"model_fp": item.model_fp, "data_fp": item.data_fp, "plan": item.plan_json}
            self.store.put(item.key, item.label, meta, result.arrays, seconds)

    def lookup(self, label: str, plan: Plan) -> EvalResult | None:
        """A finished evaluation of ``plan`` (this run's or the store's), or None; computes nothing."""
        item = self.item(label, plan)
        found = self._memo.get(item.key) or self._from_store(item)
        if found is not None:
            self._memo[item.key] = found
        return found

    def reference(self) -> EvalResult:
        return self.evaluate_many([("fp32", Plan())], desc="fp32 reference")["fp32"]

    def evaluate_many(self, labeled_plans: list[tuple[str, Plan]], desc: str = "evaluations") -> dict[str, EvalResult]:
        results: dict[str, EvalResult] = {}
        todo: list[WorkItem] = []
        for label, plan in labeled_plans:
            item = self.item(label, plan)
            found = self._memo.get(item.key) or self._from_store(item)
            if found is not None:
                results[label] = found
                self._memo[item.key] = found
            else:
                todo.append(item)
        if not todo:
            return results
        started = time.perf_counter()
        bar = tqdm(total=len(todo), desc=desc, unit="eval", disable=self.quiet, leave=False, dynamic_ncols=True)
        bar.set_postfix_str(todo[0].label, refresh=False)
        taken: set[str] = set()

        def lookup(item: WorkItem) -> EvalResult | None:
            """Just before an item starts: another process may have committed it to the store meanwhile."""
            found = self._from_store(item)
            if found is not None:
                taken.add(item.key)
            return found

        try:
            t0 = time.perf_counter()
            for item, result in self.executor.map(todo, lookup=lookup):
                if item.key in taken:
                    results[item.label] = self._memo[item.key] = result
                    bar.update(1)
                    continue
                now = time.perf_counter()
                self._save(item, result, getattr(self.executor, "seconds", {}).get(item.key, now - t0))
                t0 = now
                results[item.label] = result
                self.stats.computed += 1
                bar.set_postfix_str(item.label, refresh=False)  # the last finished (executors may run out of order)
                bar.update(1)
        finally:
            bar.close()
            self.stats.seconds += time.perf_counter() - started
        return results
