"""Evaluate plans on one in-memory model: FP32 reference once, then each plan with prefix reuse."""

from __future__ import annotations

import numpy as np
import torch

from quantsense.config import Plan
from quantsense.engine.prefix import PrefixCache
from quantsense.evaluation.batching import TokenBatches
from quantsense.evaluation.metrics import EvalResult
from quantsense.models.units import UnitMap
from quantsense.quantization.apply import PlanApplier


class Evaluator:
    """Runs a classification model over fixed token batches under any plan.

    ``prefix_reuse`` (default on) caches the FP32 block outputs during the reference pass and starts
    each plan at its first quantized block. Results are identical to a full forward pass.
    """

    def __init__(self, model: torch.nn.Module, unit_map: UnitMap, batches: TokenBatches, device: torch.device,
                 prefix_reuse: bool = True, weight_cache_bytes: int = 1 << 30, applier: PlanApplier | None = None):
        self.model = model
        self.unit_map = unit_map
        self.batches = batches
        self.device = device
        self.applier = applier or PlanApplier(unit_map, cache_bytes=weight_cache_bytes)
        self.prefix = PrefixCache(unit_map.blocks) if prefix_reuse else None
        self._inputs = [{k: v.to(device) for k, v in b.inputs.items()} for b in batches]
        self._reference: EvalResult | None = None

    def device_batches(self):
        """(example positions, model inputs already on the device) per batch."""
        return [(batch.index, inputs) for batch, inputs in zip(self.batches, self._inputs)]

    def reference(self) -> EvalResult:
        if self._reference is None:
            if self.prefix is not None:
                with self.prefix.capturing():
                    self._reference = self._run(start=0)
            else:
                self._reference = self._run(start=0)
        return self._reference

    def start_block(self, plan: Plan) -> int:
        if self.prefix is None or not plan:
            return 0
        return self.unit_map.first_block_of(plan.units())

    def evaluate(self, plan: Plan) -> EvalResult:
        if not plan:
            return self.reference()
        start = self.start_block(plan)
        if start > 0:
            self.reference()  # fills the prefix cache
        with self.applier.applied(plan):
            return self._run(start)

    @torch.inference_mode()
    def _run(self, start: int) -> EvalResult:
        logits = None
        replay = self.prefix.replaying(start) if self.prefix is not None else _null()
        with replay:
            for b, (batch, inputs) in enumerate(zip(self.batches, self._inputs)):
                if self.prefix is not None:
                    self.prefix.current_batch = b
                out = self.model(**inputs).logits.float().cpu().numpy()
                if logits is None:
                    logits = np.empty((self.batches.num_examples, out.shape[1]), dtype=np.float32)
                logits[batch.index] = out
        return EvalResult(logits=logits)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
