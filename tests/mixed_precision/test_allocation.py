import itertools

import pytest

from quantsense.config import QuantConfig
from quantsense.errors import QuantsenseError
from quantsense.mixed_precision.allocation import (
    Budget,
    allocate,
    make_groups,
    parse_size,
)
from quantsense.mixed_precision.size import average_bits, model_bytes
from quantsense.models.units import discover_units
from quantsense.quantization.fake_quant import storage_bits
from tests.conftest import tiny_model

CANDIDATES = [2, 4, 8]


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("bert")
    units = discover_units(model)
    # a made-up but structured loss: deeper and FFN units matter more, fewer bits cost more
    losses = {}
    for i, name in enumerate(units.linear_units()):
        for bits in CANDIDATES:
            losses[(name, bits)] = (1 + i % 5) * 2.0 ** (-bits)
    return model, units, losses


def _brute_force(units, groups, losses, budget_bits):
    options = CANDIDATES + [None]
    best = None
    for combo in itertools.product(options, repeat=len(groups)):
        cost = sum(storage_bits(units.get(n).shape, QuantConfig(b) if b else None) for g, b in zip(groups, combo) for n in g.units)
        if cost > budget_bits:
            continue
        loss = sum(losses[(n, b)] for g, b in zip(groups, combo) if b for n in g.units)
        if best is None or loss < best[0] - 1e-15:
            best = (loss, combo)
    return best


@pytest.mark.parametrize("avg_bits", [2.9, 3.3, 4.5, 6.0, 9.0])
def test_milp_matches_brute_force_on_blocks(setup, avg_bits):
    model, units, losses = setup
    groups = make_groups(units, "block")
    scope = sum(units.get(n).numel for g in groups for n in g.units)
    result = allocate(units, model, groups, losses, CANDIDATES, Budget(avg_bits=avg_bits), QuantConfig(8))
    best_loss, _ = _brute_force(units, groups, losses, avg_bits * scope)
    assert result.predicted_loss == pytest.approx(best_loss, rel=1e-9)
    assert result.avg_bits <= avg_bits + 1e-9
    assert result.avg_bits == pytest.approx(average_bits(units, result.plan))
    assert result.model_bytes == model_bytes(model, units, result.plan)


def test_more_budget_never_hurts(setup):
    model, units, losses = setup
    groups = make_groups(units, "linear")
    previous = float("inf")
    for avg in [2.9, 3.5, 4, 5, 6, 8]:
        loss = allocate(units, model, groups, losses, CANDIDATES, Budget(avg_bits=avg), QuantConfig(8)).predicted_loss
        assert loss <= previous + 1e-12
        previous = loss


def test_size_budget_in_bytes(setup):
    model, units, losses = setup
    groups = make_groups(units, "linear")
    target = model_bytes(model, units, allocate(units, model, groups, losses, CANDIDATES, Budget(avg_bits=4),
                                                QuantConfig(8)).plan)
    result = allocate(units, model, groups, losses, CANDIDATES, Budget(max_bytes=target), QuantConfig(8))
    assert result.model_bytes <= target


def test_tied_units_share_a_bit_width(setup):
    model, units, losses = setup
    groups = make_groups(units, "linear", tie=r"query|key|value")
    assert len(groups) == units.num_blocks * 4
    result = allocate(units, model, groups, losses, CANDIDATES, Budget(avg_bits=4.2), QuantConfig(8))
    configs = result.plan.as_dict()
    for block in range(units.num_blocks):
        qkv = [configs.get(f"bert.encoder.layer.{block}.attention.self.{p}") for p in ("query", "key", "value")]
        assert qkv[0] == qkv[1] == qkv[2]


def test_impossible_budget_names_the_smallest_feasible(setup):
    model, units, losses = setup
    groups = make_groups(units, "block")
    with pytest.raises(QuantsenseError, match=r"impossible.*smallest feasible is --avg-bits 2\.\d+"):
        allocate(units, model, groups, losses, CANDIDATES, Budget(avg_bits=1.5), QuantConfig(8))
    with pytest.raises(QuantsenseError, match=r"smallest feasible is --max-size"):
        allocate(units, model, groups, losses, CANDIDATES, Budget(max_bytes=1000), QuantConfig(8))


def test_parse_size():
    assert parse_size("20MB") == 20_000_000
    assert parse_size("1.5 GiB") == int(1.5 * 2**30)
    assert parse_size("512") == 512
    with pytest.raises(QuantsenseError, match="not understood"):
        parse_size("twenty")
    with pytest.raises(QuantsenseError, match="exactly one budget"):
        Budget()
