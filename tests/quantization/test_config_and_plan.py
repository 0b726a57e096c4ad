import json

import pytest

from quantsense.config import BlockPlan, Plan, QuantConfig
from quantsense.errors import QuantsenseError


@pytest.mark.parametrize("bits", [1, 9, 0, -4])
def test_bits_out_of_range_names_the_value(bits):
    with pytest.raises(QuantsenseError, match=f"bits must be in 2..8, got {bits}"):
        QuantConfig(bits)


def test_config_validation_messages():
    with pytest.raises(QuantsenseError, match="granularity"):
        QuantConfig(4, granularity="per_row")
    with pytest.raises(QuantsenseError, match="group_size"):
        QuantConfig(4, granularity="per_group")
    with pytest.raises(QuantsenseError, match="only valid with granularity per_group"):
        QuantConfig(4, group_size=32)
    with pytest.raises(QuantsenseError, match="integer"):
        QuantConfig(4.0)


def test_qmin_qmax():
    assert (QuantConfig(8).qmin, QuantConfig(8).qmax) == (-128, 127)
    assert (QuantConfig(4, symmetric=False).qmin, QuantConfig(4, symmetric=False).qmax) == (0, 15)


def test_plan_round_trips_through_json(tmp_path):
    plan = Plan.of(
        {"a.b": QuantConfig(4), "c": QuantConfig(8, symmetric=False, granularity="per_group", group_size=64)}
    )
    path = tmp_path / "plan.json"
    plan.save(path)
    loaded = Plan.load(path)
    assert loaded == plan
    assert loaded.canonical_json() == plan.canonical_json()


def test_unknown_keys_are_rejected(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"units": {"a": {"bits": 4, "symetric": True}}}))
    with pytest.raises(QuantsenseError, match="unknown key.*symetric"):
        Plan.load(path)
    path.write_text(json.dumps({"unitz": {}}))
    with pytest.raises(QuantsenseError, match="unknown key.*unitz"):
        Plan.load(path)


def test_malformed_plan_files(tmp_path):
    with pytest.raises(QuantsenseError, match="does not exist"):
        Plan.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(QuantsenseError, match="not valid JSON"):
        Plan.load(bad)


def test_block_plans_resolve_and_check_range():
    plan = Plan.from_json_dict({"blocks": {"1": {"bits": 4}}, "units": {"x0": {"bits": 8}}})
    assert isinstance(plan, BlockPlan)
    resolved = plan.resolve([["x0", "y0"], ["x1", "y1"]])
    assert resolved.as_dict() == {"x0": QuantConfig(8), "x1": QuantConfig(4), "y1": QuantConfig(4)}
    with pytest.raises(QuantsenseError, match="block index 5 is out of range"):
        Plan.from_json_dict({"blocks": {"5": {"bits": 4}}}).resolve([["a"], ["b"]])
