"""The last block computing only the classifier's position gives the full forward's logits up to float rounding."""

import numpy as np
import pytest
import torch

from quantsense.evaluation.heads import ClassificationHead
from quantsense.engine import last_block
from tests.conftest import tiny_model


def padded_inputs(vocab: int = 128, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (6, 11), generator=g)
    mask = torch.ones_like(ids)
    for row, length in enumerate((11, 9, 7, 4, 2, 1)):
        mask[row, length:] = 0
        ids[row, length:] = 1  # a pad id
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])  # a boolean mask, an additive float mask
@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert"])
def test_first_position_logits_equal_the_full_forward(arch, attention):
    model = tiny_model(arch)
    model.set_attn_implementation(attention)
    assert last_block.supported(model)
    inputs, blocks = (
        padded_inputs(),
        model.base_model.encoder.layer if arch != "distilbert" else model.distilbert.transformer.layer,
    )
    seen = []
    blocks[-1].register_forward_hook(lambda module, args, output: seen.append(tuple(output.shape)))
    with torch.inference_mode():
        full = model(**inputs).logits
        with last_block.first_position_only(model, blocks[-1]):
            pruned = model(**inputs).logits
        again = model(**inputs).logits  # the block's own forward is back
    assert seen == [(6, 11, 32), (6, 1, 32), (6, 11, 32)]  # the pruned pass computed one position
    assert torch.allclose(pruned, full, rtol=0, atol=1e-5), (pruned - full).abs().max()
    assert torch.equal(again, full)
    assert full.abs().max() > 1e-3  # logits that can differ


def test_other_models_run_unchanged():
    assert not last_block.supported(tiny_model("gpt2"))  # reads the last non-pad token
    assert not last_block.supported(tiny_model("llama"))
    training = tiny_model("bert").train()
    assert not last_block.supported(training)


def test_the_variant_has_its_own_store_key_and_the_plain_key_is_unchanged():
    import hashlib
    import json

    from quantsense.engine.executor import WorkItem
    from quantsense.evaluation.metrics import METRIC_VERSION

    plain = WorkItem("x", '{"units": {}}', "m", "d")
    pruned = WorkItem("x", '{"units": {}}', "m", "d", last_block.VARIANT)
    old = json.dumps(
        {"model": "m", "data": "d", "plan": '{"units": {}}', "metric_version": METRIC_VERSION}, sort_keys=True
    )
    assert plain.key == hashlib.sha256(old.encode()).hexdigest()  # rows stored before the variant existed stay valid
    assert pruned.key != plain.key


def test_the_evaluator_prunes_the_models_last_layer_and_matches_the_full_forward():
    from quantsense.engine.evaluator import Evaluator
    from quantsense.evaluation.batching import make_batches
    from quantsense.models.units import discover_units
    from tests.conftest import random_encoded

    model = tiny_model("bert")
    assert last_block.last_layer(model) is model.bert.encoder.layer[-1]
    batches = make_batches(random_encoded(), pad_id=0)
    widths = {i: set() for i in range(3)}
    for i, layer in enumerate(model.bert.encoder.layer):
        layer.register_forward_hook(lambda module, args, output, i=i: widths[i].add(output.shape[1]))
    evaluator = Evaluator(model, discover_units(model), batches, torch.device("cpu"), head=ClassificationHead())
    reference = evaluator.reference().logits
    assert widths[2] == {1} and min(widths[0]) > 1 and min(widths[1]) > 1
    with torch.inference_mode():
        full = {int(j): row for b in batches for j, row in zip(b.index, model(**b.inputs).logits)}
    assert np.allclose(reference, torch.stack([full[j] for j in range(len(full))]).numpy(), rtol=0, atol=1e-5)
