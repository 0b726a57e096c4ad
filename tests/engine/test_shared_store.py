"""Two writers on one store: each checks the store before each item, so a row the other committed meanwhile is
reused, not computed again."""

import numpy as np
import torch

from quantsense.evaluation.heads import ClassificationHead
from quantsense.config import Plan, QuantConfig
from quantsense.engine import Engine, Evaluator
from quantsense.engine.executor import LocalExecutor
from quantsense.evaluation.batching import make_batches
from quantsense.models.units import discover_units
from quantsense.store import ResultStore
from tests.conftest import random_encoded, tiny_model


class _OtherWriterFirst(LocalExecutor):
    """Before this engine's first item, another engine on the same store finishes ``steal`` and commits it."""

    def __init__(self, evaluator, other: Engine, steal: list[tuple[str, Plan]]):
        super().__init__(evaluator)
        self.other, self.steal, self.evaluated = other, steal, []

    def run(self, item):
        if self.steal:
            self.other.evaluate_many(self.steal)
            self.steal = []
        self.evaluated.append(item.label)
        return super().run(item)


def test_a_row_committed_by_another_writer_meanwhile_is_reused(tmp_path):
    model = tiny_model("bert")
    units = discover_units(model)
    evaluator = Evaluator(
        model,
        units,
        make_batches(random_encoded(), pad_id=0, max_batch_tokens=64),
        torch.device("cpu"),
        head=ClassificationHead(),
    )
    plans = [(f"block{i}@int4", Plan.of({n: QuantConfig(4) for n in units.block_units(i)})) for i in range(3)]
    path = tmp_path / "shared.sqlite"
    other = Engine(evaluator, "model", "data", store=ResultStore(path), quiet=True)
    executor = _OtherWriterFirst(evaluator, other, plans[1:])  # the other writer takes blocks 1 and 2
    engine = Engine(evaluator, "model", "data", store=ResultStore(path), executor=executor, quiet=True)
    results = engine.evaluate_many(plans)
    assert executor.evaluated == ["block0@int4"]
    assert (engine.stats.computed, engine.stats.from_store) == (1, 2)
    assert other.stats.computed == 2
    for label, plan in plans:
        assert np.array_equal(results[label].arrays["logits"], evaluator.evaluate(plan).arrays["logits"])
