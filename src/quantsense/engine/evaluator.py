"""Evaluate plans on one in-memory model: FP32 reference once, then each plan with prefix reuse."""

from __future__ import annotations

import torch

from quantsense.engine import last_block
from quantsense.engine.prefix import PrefixCache
from quantsense.evaluation.batching import TokenBatches
from quantsense.evaluation.metrics import EvalResult
from quantsense.models.units import UnitMap
from quantsense.quantization.apply import PlanApplier
from quantsense.quantization.plan import Plan


class Evaluator:
    """Runs a model over fixed batches under any plan; a head turns logits into kept outputs.

    ``prefix_reuse`` (default on) caches FP32 block outputs during the reference pass and starts
    each plan at its first quantized block; results are identical to a full forward pass. The
    cache holds at most ``prefix_cache_bytes``: beyond that only every k-th block boundary is
    kept and a plan starts at the nearest kept boundary before its first quantized block.
    For a classifier that reads only the first position (BERT, RoBERTa, DistilBERT), the model's last
    layer computes that position alone, equal up to float rounding (:mod:`quantsense.engine.last_block`);
    ``variant`` then names this forward.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        unit_map: UnitMap,
        batches: TokenBatches,
        device: torch.device,
        prefix_reuse: bool = True,
        weight_cache_bytes: int = 1 << 30,
        applier: PlanApplier | None = None,
        head=None,
        prefix_cache_bytes: int = 2 << 30,
        runtime_activations: bool = False,
    ):
        if head is None:
            raise TypeError("Evaluator needs the task's head (task.head()): it turns logits into the outputs kept")
        self.model = model
        self.unit_map = unit_map
        self.batches = batches
        self.device = device
        self.head = head
        self.applier = applier or PlanApplier(
            unit_map, cache_bytes=weight_cache_bytes, runtime_activations=runtime_activations
        )
        self.prefix = None
        self.prefix_cache_bytes = prefix_cache_bytes
        if prefix_reuse:
            hidden = (
                getattr(model.config, "hidden_size", None)
                or getattr(model.config, "n_embd", None)
                or getattr(model.config, "dim", 1)
            )
            per_boundary = 4 * hidden * sum(b.inputs["input_ids"].numel() for b in batches)
            every = max(1, -(-per_boundary * unit_map.num_blocks // prefix_cache_bytes))
            self.prefix = PrefixCache(unit_map.blocks, every=every)
        self.first_position = last_block.supported(model)
        self.variant = last_block.VARIANT if self.first_position else ""
        if self.applier.runtime_activations:  # inputs rounded as the formats' runtime does: other numbers, other key
            self.variant += "+runtime-activations"
        self._inputs = [{k: v.to(device) for k, v in b.inputs.items()} for b in batches]
        self._reference: EvalResult | None = None

    def device_batches(self):
        """(example positions, model inputs already on the device) per batch."""
        return [(batch.index, inputs) for batch, inputs in zip(self.batches, self._inputs)]

    def reference(self) -> EvalResult:
        if self._reference is None:
            capture = self.prefix.capturing() if self.prefix is not None else _null()
            with capture:
                self._reference = self._run(start=0, reference=True)
        return self._reference

    def start_block(self, plan: Plan) -> int:
        if self.prefix is None or not plan:
            return 0
        return self.prefix.resume_point(self.unit_map.first_block_of(plan.units()))

    def evaluate(self, plan: Plan) -> EvalResult:
        if not plan:
            return self.reference()
        if self.applier.changes_nothing(plan):  # the same weights give the same outputs: no forward pass needed
            return self.head.unchanged(self.reference())
        start = self.start_block(plan)
        if start > 0 or self.head.needs_reference:
            self.reference()  # fills the prefix cache and whatever the head compares against
        with self.applier.applied(plan):
            return self._run(start, reference=False, first_position=self._first_position_under(plan))

    def _first_position_under(self, plan: Plan) -> bool:
        """Whether the last block may compute the first position alone under ``plan``: not when a planned unit in it
        quantizes its input with one scale per tensor (ONNX Runtime's dynamic int8), since that scale sees every
        position (and the shortcut reads the key and value weights without calling those modules)."""
        last = self.unit_map.num_blocks - 1
        return self.first_position and all(
            self.unit_map.get(n).block != last for n in self.applier.input_quantized(plan)
        )

    @torch.inference_mode()
    def _run(self, start: int, reference: bool, first_position: bool = True) -> EvalResult:
        self.head.start(self.batches, reference)
        replay = self.prefix.replaying(start) if self.prefix is not None else _null()
        last = last_block.last_layer(self.model) if self.first_position and first_position else None
        replayed = any(block is last for block in self.unit_map.blocks[:start])  # its stored output is used instead
        pruned = last_block.first_position_only(self.model, last) if last is not None and not replayed else _null()
        with replay, pruned:
            for b, (batch, inputs) in enumerate(zip(self.batches, self._inputs)):
                if self.prefix is not None:
                    self.prefix.current_batch = b
                self.head.step(b, batch, self.model(**inputs, **self.head.kwargs_for(self.model, batch)).logits)
        return EvalResult(self.head.finish())


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
