import pytest
import torch

from quantsense.config import Plan, QuantConfig
from quantsense.errors import QuantsenseError
from quantsense.models.units import discover_units
from quantsense.quantization.apply import PlanApplier, apply_plan
from quantsense.quantization.fake_quant import fake_quantize
from tests.conftest import ARCHS, EXPECTED_BLOCK_UNITS, random_inputs, tiny_model


@pytest.mark.parametrize("arch", ARCHS)
def test_discovers_blocks_and_linear_units(arch):
    model = tiny_model(arch)
    units = discover_units(model)
    assert units.num_blocks == 3
    for i in range(3):
        names = units.block_units(i)
        short = [units.get(n).short_name(units.block_prefix) for n in names]
        assert short == EXPECTED_BLOCK_UNITS[arch]
    extra = {units.get(n).kind for n in units.extra_units()}
    assert "embedding" in extra and "head" in extra


def test_gpt2_conv1d_is_marked_transposed():
    units = discover_units(tiny_model("gpt2"))
    c_attn = units.get("transformer.h.0.attn.c_attn")
    assert c_attn.transposed and c_attn.shape == (32, 96)  # [in, out]
    assert not units.get("score").transposed


def test_block_index_out_of_range_is_a_clear_error():
    units = discover_units(tiny_model("bert"))
    with pytest.raises(QuantsenseError, match="block index 3 is out of range: the model has blocks 0..2"):
        units.block_units(3)


def test_unknown_unit_suggests_close_names():
    units = discover_units(tiny_model("bert"))
    with pytest.raises(QuantsenseError, match="unknown unit 'query'.*did you mean"):
        units.get("query")


def test_regex_override():
    model = tiny_model("bert")
    units = discover_units(model, blocks_regex=r"bert\.encoder\.layer\.\d+")
    assert units.num_blocks == 3
    with pytest.raises(QuantsenseError, match="matched no module"):
        discover_units(model, blocks_regex=r"nothing\.\d+")
    with pytest.raises(QuantsenseError, match="not a valid regex"):
        discover_units(model, blocks_regex="(")


@pytest.mark.parametrize("arch", ARCHS)
def test_apply_changes_outputs_and_restores_bit_exactly(arch):
    model = tiny_model(arch)
    units = discover_units(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = random_inputs()
    with torch.inference_mode():
        ref = model(**inputs).logits
    plan = Plan.of({n: QuantConfig(3) for n in units.block_units(1)})
    with apply_plan(units, plan):
        with torch.inference_mode():
            changed = model(**inputs).logits
    assert not torch.equal(ref, changed)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_restore_after_error_inside_context():
    model = tiny_model("bert")
    units = discover_units(model)
    name = units.block_units(0)[0]
    original = units.get(name).weight.detach().clone()
    with pytest.raises(RuntimeError):
        with apply_plan(units, Plan.of({name: QuantConfig(2)})):
            assert not torch.equal(units.get(name).weight, original)
            raise RuntimeError("boom")
    assert torch.equal(units.get(name).weight, original)


def test_applied_weight_is_the_fake_quantized_weight_including_conv1d():
    model = tiny_model("gpt2")
    units = discover_units(model)
    name = "transformer.h.2.mlp.c_fc"
    original = units.get(name).weight.detach().clone()
    applier = PlanApplier(units)
    with applier.applied(Plan.of({name: QuantConfig(4)})):
        expected = fake_quantize(original.t(), QuantConfig(4)).t()  # per output channel = per column
        assert torch.equal(units.get(name).weight, expected)
