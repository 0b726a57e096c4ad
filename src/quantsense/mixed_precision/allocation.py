"""Budgeted bit allocation, solved exactly as a 0/1 integer program (``scipy.optimize.milp``).

Given, for every allocation group g (a block, a linear unit, or units tied together) and every
option o (a bit-width or FP32), a measured loss L[g, o] (sum over the group's units of the
"only this unit quantized" mean KL, or accuracy drop) and a storage cost C[g, o] in bits (codes
plus fp32 scales and 8-bit zero points), choose one option per group:

    minimise  sum L[g, o] x[g, o]
    s.t.      sum_o x[g, o] = 1 for every g,   sum C[g, o] x[g, o] <= budget,   x binary.

The budget is an average number of stored bits per weight over the allocation scope (the block
linear weights) or a size in bytes of the whole model (everything outside the scope at fp32).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from quantsense.config import Plan, QuantConfig
from quantsense.errors import QuantsenseError
from quantsense.mixed_precision.size import model_bytes
from quantsense.models.units import UnitMap
from quantsense.quantization.fake_quant import storage_bits

FP32 = None  # the "leave unquantized" option
_SIZE_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(text: str) -> int:
    """'20MB' -> 20_000_000 bytes; also KB/GB, KiB/MiB/GiB and plain bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or (unit and unit not in _SIZE_UNITS):
        raise QuantsenseError(f"size {text!r} is not understood; write e.g. 20MB, 18.5MiB or 20000000")
    return int(float(match.group(1)) * _SIZE_UNITS.get(unit, 1))


@dataclass(frozen=True)
class Budget:
    avg_bits: float | None = None
    max_bytes: int | None = None

    def __post_init__(self):
        if (self.avg_bits is None) == (self.max_bytes is None):
            raise QuantsenseError("give exactly one budget: --avg-bits or --max-size")

    def label(self) -> str:
        return f"{self.avg_bits:g} bits/weight" if self.avg_bits is not None else f"{self.max_bytes / 1e6:.2f} MB"


@dataclass
class Group:
    name: str
    units: tuple[str, ...]


def make_groups(unit_map: UnitMap, granularity: str, tie: str | None = None) -> list[Group]:
    """Allocation groups: one per block, or one per linear unit with ``tie`` regex matches merged per block."""
    if granularity == "block":
        return [Group(f"block {i}", tuple(unit_map.block_units(i))) for i in range(unit_map.num_blocks)]
    pattern = re.compile(tie) if tie else None
    groups: list[Group] = []
    tied: dict[int, Group] = {}
    for name in unit_map.linear_units():
        unit = unit_map.get(name)
        if pattern and pattern.search(unit.short_name(unit_map.block_prefix)):
            if unit.block not in tied:
                tied[unit.block] = Group(f"block {unit.block} tied[{tie}]", ())
                groups.append(tied[unit.block])
            tied[unit.block].units += (name,)
        else:
            groups.append(Group(name, (name,)))
    return groups


@dataclass
class Allocation:
    plan: Plan
    choices: dict[str, int | None]  # group name -> bits (None = FP32)
    predicted_loss: float
    avg_bits: float
    model_bytes: int


def _group_cost(unit_map: UnitMap, group: Group, config: QuantConfig | None) -> int:
    return sum(storage_bits(unit_map.get(n).shape, config, unit_map.get(n).transposed) for n in group.units)


def allocate(unit_map: UnitMap, model, groups: list[Group], losses: dict[tuple[str, int], float], candidates: list[int],
             budget: Budget, scheme: QuantConfig, allow_fp32: bool = True) -> Allocation:
    """Exact minimum-loss choice of one option per group under ``budget``.

    ``losses[(unit name, bits)]`` is the measured loss of that unit alone at ``bits``.
    """
    options: list[int | None] = sorted(candidates) + ([FP32] if allow_fp32 else [])
    configs = {b: (scheme.replace(bits=b) if b is not None else None) for b in options}
    n_g, n_o = len(groups), len(options)
    loss = np.zeros((n_g, n_o))
    cost = np.zeros((n_g, n_o))
    for g, group in enumerate(groups):
        for o, bits in enumerate(options):
            cost[g, o] = _group_cost(unit_map, group, configs[bits])
            if bits is not None:
                loss[g, o] = sum(losses[(name, bits)] for name in group.units)
    scope_numel = sum(unit_map.get(n).numel for group in groups for n in group.units)
    outside_bits = 8 * model_bytes(model, unit_map, Plan()) - 32 * scope_numel
    if budget.avg_bits is not None:
        limit = budget.avg_bits * scope_numel
        smallest = cost.min(axis=1).sum() / scope_numel
        need = f"--avg-bits {np.ceil(smallest * 1000) / 1000:.3f}"
    else:
        limit = 8 * budget.max_bytes - outside_bits
        smallest_bytes = (cost.min(axis=1).sum() + outside_bits) / 8
        need = f"--max-size {np.ceil(smallest_bytes / 1e4) / 100:.2f}MB"
    if cost.min(axis=1).sum() > limit:
        raise QuantsenseError(f"budget {budget.label()} is impossible with bits {candidates}: the smallest feasible is {need}")
    one_hot = np.zeros((n_g, n_g * n_o))
    for g in range(n_g):
        one_hot[g, g * n_o : (g + 1) * n_o] = 1
    constraints = [LinearConstraint(one_hot, 1, 1), LinearConstraint(cost.reshape(1, -1), -np.inf, limit)]
    # a tiny cost tie-break prefers the smaller of equally good plans, deterministically
    objective = loss.reshape(-1) + 1e-12 * cost.reshape(-1) / cost.max()
    result = milp(objective, constraints=constraints, integrality=np.ones(n_g * n_o), bounds=Bounds(0, 1))
    if not result.success:
        raise QuantsenseError(f"the allocation solver failed for budget {budget.label()}: {result.message}")
    chosen = result.x.reshape(n_g, n_o).argmax(axis=1)
    mapping, choices = {}, {}
    for g, group in enumerate(groups):
        bits = options[chosen[g]]
        choices[group.name] = bits
        if bits is not None:
            mapping.update({n: configs[bits] for n in group.units})
    total_bits = float(cost[np.arange(n_g), chosen].sum())
    return Allocation(plan=Plan.of(mapping), choices=choices, predicted_loss=float(loss[np.arange(n_g), chosen].sum()),
                      avg_bits=total_bits / scope_numel, model_bytes=int((total_bits + outside_bits) // 8))

