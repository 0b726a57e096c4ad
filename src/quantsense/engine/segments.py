"""Segments: the data cut into interleaved parts, so that a plan can be scored on a growing prefix of them.

Segment ``s`` of ``S`` holds batches ``s, s+S, s+2S, ...``. Batches are sorted by length for classification and in
stream order for a language model, so every segment spans the whole range of the data rather than its longest
sentences or its first article. Scoring a plan on segments ``0..k-1`` gives its paired metrics on that share of the
data, with intervals as wide as that share makes them (sequential evaluation: measure on one segment, add segments
only while the answer is undecided). There are fewer segments when the first one would hold fewer than
``MIN_BOOTSTRAP_BLOCKS`` bootstrap blocks, so no decision is taken on a degenerate interval.

Each (plan, segment) is its own stored evaluation, keyed by the data fingerprint and the segment, so a longer prefix
computes only the segments it lacks and a rerun computes nothing. A segment's outputs are the full evaluation's
outputs on the same examples (the same batches through the same forward), so when the full evaluation of a plan is
already known it is sliced instead of computed.
"""

from __future__ import annotations

import numpy as np

from quantsense.engine.evaluator import Evaluator
from quantsense.engine.runner import Engine
from quantsense.evaluation.batching import TokenBatches
from quantsense.evaluation.metrics import EvalResult
from quantsense.evaluation.statistics import MIN_BOOTSTRAP_BLOCKS
from quantsense.quantization.plan import Plan

DEFAULT_SEGMENTS = 4


class Segments:
    """``S`` interleaved segments of a full engine's batches, each with its own engine on the same model and store."""

    def __init__(self, engine: Engine, task, data, seed: int = 0, count: int | None = None):
        batches = engine.evaluator.batches
        self.engine, self.task, self.data, self.seed = engine, task, data, seed
        self.count = max(1, min(count or DEFAULT_SEGMENTS, len(batches)))
        while (
            self.count > 1
            and task.interval_blocks(sum(len(b.index) for b in list(batches)[:: self.count])) < MIN_BOOTSTRAP_BLOCKS
        ):
            self.count -= 1  # the first segment alone (the smallest prefix scored) must hold an interval's blocks
        self.parts = [[b for i, b in enumerate(batches) if i % self.count == s] for s in range(self.count)]
        every = np.sort(np.concatenate([b.index for b in batches]))
        self.positions = [np.sort(np.concatenate([b.index for b in part])) for part in self.parts]
        self.rows = [np.searchsorted(every, p) for p in self.positions]  # where a segment sits in the full arrays
        self.tokens = [sum(b.num_tokens for b in part) for part in self.parts]
        self.total_tokens = sum(self.tokens)
        self._engines: dict[int, Engine] = {}

    def tokens_upto(self, upto: int) -> int:
        """Input tokens of segments ``0..upto-1``."""
        return sum(self.tokens[:upto])

    def _engine(self, s: int) -> Engine:
        if s not in self._engines:
            full = self.engine.evaluator
            sub = TokenBatches(self.parts[s], full.batches.num_examples, full.batches.settings)
            evaluator = Evaluator(
                full.model,
                full.unit_map,
                sub,
                full.device,
                prefix_reuse=full.prefix is not None,
                applier=full.applier,
                head=self.task.head(),
                prefix_cache_bytes=full.prefix_cache_bytes // self.count,
            )  # all segments: one cap
            self._engines[s] = Engine(
                evaluator,
                self.engine.model_fp,
                f"{self.engine.data_fp}#segment{s}of{self.count}",
                store=self.engine.store,
                fresh=self.engine.fresh,
                quiet=self.engine.quiet,
                valid=lambda arrays, sub=sub: self.task.arrays_valid(arrays, sub),
            )
            self._engines[s].stats = self.engine.stats  # the command's count of evaluations includes the segments'
        return self._engines[s]

    def results(
        self, labeled_plans: list[tuple[str, Plan]], upto: int, desc: str = "evaluations"
    ) -> dict[str, EvalResult]:
        """Each plan's outputs on segments ``0..upto-1``, in data order (sliced from a known full evaluation, taken
        from the store, or computed one segment at a time)."""
        upto = max(1, min(upto, self.count))
        parts: dict[str, list[EvalResult | None]] = {}
        for label, plan in labeled_plans:
            full = self.engine.lookup(label, plan)
            parts[label] = [self._slice(full, s) if full is not None else None for s in range(upto)]
        for s in range(upto):
            todo = [(label, plan) for label, plan in labeled_plans if parts[label][s] is None]
            if todo:
                found = self._engine(s).evaluate_many(todo, desc=f"{desc} (segment {s + 1} of {self.count})")
                for label, _ in todo:
                    parts[label][s] = found[label]
        order = np.argsort(np.concatenate(self.positions[:upto]), kind="stable")
        return {
            label: EvalResult({k: np.concatenate([p.arrays[k] for p in pieces])[order] for k in pieces[0].arrays})
            for label, pieces in parts.items()
        }

    def compare(self, labeled_plans: list[tuple[str, Plan]], upto: int, desc: str = "evaluations") -> dict[str, dict]:
        """Each plan's paired metrics against FP32 on segments ``0..upto-1``."""
        upto = max(1, min(upto, self.count))
        found = self.results([("fp32", Plan()), *labeled_plans], upto, desc)
        data = self.task.subset(self.data, np.sort(np.concatenate(self.positions[:upto])))
        return {
            label: self.task.compare(found["fp32"], found[label], data, seed=self.seed) for label, _ in labeled_plans
        }

    def _slice(self, full: EvalResult, s: int) -> EvalResult:
        return EvalResult({k: v[self.rows[s]] for k, v in full.arrays.items()})
