import numpy as np
import pytest
import torch

from quantsense.evaluation.heads import ClassificationHead
from quantsense.config import Plan, QuantConfig
from quantsense.engine import Evaluator
from quantsense.evaluation.batching import make_batches
from quantsense.models.units import discover_units
from tests.conftest import random_encoded, tiny_model


@pytest.mark.parametrize("arch", ["bert", "distilbert", "gpt2", "llama", "opt"])
def test_prefix_reuse_is_bit_identical_to_full_forward(arch):
    model = tiny_model(arch)
    units = discover_units(model)
    batches = make_batches(random_encoded(23), pad_id=0, max_batch_tokens=64)
    assert len(batches) > 2
    fast = Evaluator(model, units, batches, torch.device("cpu"), prefix_reuse=True, head=ClassificationHead())
    plain = Evaluator(model, units, batches, torch.device("cpu"), prefix_reuse=False, head=ClassificationHead())
    assert np.array_equal(fast.reference().logits, plain.reference().logits)
    for block in range(units.num_blocks):
        plan = Plan.of({n: QuantConfig(4) for n in units.block_units(block)})
        assert fast.start_block(plan) == block
        got, want = fast.evaluate(plan).logits, plain.evaluate(plan).logits
        assert np.array_equal(got, want), (arch, block)
        assert not np.array_equal(got, fast.reference().logits)


def test_plan_with_embedding_starts_at_block_zero_and_head_at_last():
    model = tiny_model("bert")
    units = discover_units(model)
    ev = Evaluator(model, units, make_batches(random_encoded(23), 0), torch.device("cpu"), head=ClassificationHead())
    assert ev.start_block(Plan.of({"bert.embeddings.word_embeddings": QuantConfig(8)})) == 0
    assert ev.start_block(Plan.of({"classifier": QuantConfig(8)})) == units.num_blocks
    head_plan = Plan.of({"classifier": QuantConfig(2)})
    plain = Evaluator(
        model,
        units,
        make_batches(random_encoded(23), 0),
        torch.device("cpu"),
        prefix_reuse=False,
        head=ClassificationHead(),
    )
    assert np.array_equal(ev.evaluate(head_plan).logits, plain.evaluate(head_plan).logits)


def test_sorted_batches_cover_every_example_once_with_little_padding():
    encoded = random_encoded(200)
    batches = make_batches(encoded, 0, max_batch_tokens=256)
    index = np.concatenate([b.index for b in batches])
    assert sorted(index.tolist()) == list(range(200))
    padded = sum(b.inputs["input_ids"].numel() for b in batches)
    real = sum(len(e["input_ids"]) for e in encoded)
    assert padded / real < 1.1
    assert all(b.inputs["input_ids"].numel() <= 256 or len(b.index) == 1 for b in batches)
