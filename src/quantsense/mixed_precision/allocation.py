"""Budgeted format allocation, solved exactly as a 0/1 integer program (``scipy.optimize.milp``).

Given, for every allocation group g (a block, a linear unit, or units tied together) and every
option o (a candidate format or FP32), a measured loss L[g, o] (sum over the group's units of the
"only this unit quantized" mean KL, or the task's loss) and a storage cost C[g, o] in bits (each
format prices itself, scales included), choose one option per group:

    minimise  sum L[g, o] x[g, o]
    s.t.      sum_o x[g, o] = 1 for every g,   sum C[g, o] x[g, o] <= budget,   x binary.

Losses are divided by their largest value before solving and the solver's relative gap is set to
0, so plans are optimal whatever the losses' scale (INT8-level KLs are around 1e-7, below HiGHS's
absolute tolerances). An option a group's shapes cannot take (a GGUF block format on rows that are
not multiples of 32) is excluded. The budget is an average number of stored bits per weight over the
allocation scope (the block linear weights) or a size in bytes of the whole model.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np

from quantsense.errors import QuantsenseError
from quantsense.models.units import UnitMap
from quantsense.quantization.formats import Format
from quantsense.quantization.plan import Plan
from quantsense.quantization.size import model_bytes, storage_bits
from quantsense.sweeps.candidates import Candidates

_SIZE_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(text: str) -> int:
    """'20MB' -> 20_000_000 bytes; also KB/GB, KiB/MiB/GiB and plain bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or (unit and unit not in _SIZE_UNITS):
        raise QuantsenseError(f"size {text!r} is not understood; write e.g. 20MB, 18.5MiB or 20000000")
    value = int(float(match.group(1)) * _SIZE_UNITS.get(unit, 1))
    if value <= 0:
        raise QuantsenseError(f"size {text!r} must be positive")
    return value


@dataclass(frozen=True)
class Budget:
    avg_bits: float | None = None
    max_bytes: int | None = None
    preset: str | None = None  # a llama.cpp preset this budget equals (its bits per block linear weight)
    model: str | None = None  # the weights fingerprint of the workspace a preset's budget was computed on

    def __post_init__(self):
        if (self.avg_bits is None) == (self.max_bytes is None):
            raise QuantsenseError("give exactly one budget: --avg-bits or --max-size")
        if self.preset is not None:
            from quantsense.mixed_precision.presets import preset_name

            if preset_name(self.preset) != self.preset:
                raise QuantsenseError(f"preset {self.preset!r} is spelled {preset_name(self.preset)!r}")
            if self.model is None:
                raise QuantsenseError(
                    f"a budget of preset {self.preset} is computed on a workspace: "
                    f"quantsense.preset_budget(ws, {self.preset!r}) (its size differs from model to model)"
                )
        if self.avg_bits is not None and not (
            _is_number(self.avg_bits) and math.isfinite(self.avg_bits) and self.avg_bits > 0
        ):
            raise QuantsenseError(
                f"avg_bits (--avg-bits) must be a positive number of bits per weight, got {self.avg_bits!r}"
            )
        if self.max_bytes is not None and not (
            _is_number(self.max_bytes) and math.isfinite(self.max_bytes) and self.max_bytes > 0
        ):
            raise QuantsenseError(f"max_bytes (--max-size) must be a positive number of bytes, got {self.max_bytes!r}")

    @classmethod
    def of(cls, value) -> "Budget":
        """A budget as given: a :class:`Budget`, or a number meaning average bits per weight (``4.5``)."""
        if isinstance(value, Budget):
            return value
        if _is_number(value):
            return cls(avg_bits=value)
        raise QuantsenseError(f"a budget is a number of bits per weight (e.g. 4.5) or a Budget(...), got {value!r}")

    def check_model(self, model_fp: str) -> None:
        """Refuse a preset's budget computed on another model (its bits per weight are that model's)."""
        if self.model is not None and self.model != model_fp:
            raise QuantsenseError(
                f"this {self.label()} budget was computed on another model (weights {self.model}, this "
                f"one's are {model_fp}); compute it on this workspace: "
                f"quantsense.preset_budget(ws, {self.preset!r})"
            )

    def label(self) -> str:
        if self.preset is not None:
            return f"{self.preset} size"
        return f"{self.avg_bits:g} bits/weight" if self.avg_bits is not None else f"{self.max_bytes / 1e6:.2f} MB"

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass
class Group:
    name: str
    units: tuple[str, ...]
    block: int | None = None
    layer_kind: str = "block"  # what the group is inside its block: "block", "mlp.down_proj", "tied[q|k]"

    def describe(self) -> dict:
        return {"block": self.block, "layer_kind": self.layer_kind}


def make_groups(
    unit_map: UnitMap, unit_kind: str, tie: str | None = None, outside: tuple[str, ...] = ()
) -> list[Group]:
    """Allocation groups: one per block, or one per linear unit with ``tie`` regex matches merged per block; and one per
    unit outside the blocks named in ``outside`` (the token embedding, an untied output head)."""
    extra = [Group(name, (name,), None, unit_map.get(name).kind) for name in outside]
    if unit_kind == "block":
        return [Group(f"block {i}", tuple(unit_map.block_units(i)), i) for i in range(unit_map.num_blocks)] + extra
    pattern = compile_tie(tie)
    groups: list[Group] = []
    tied: dict[int, Group] = {}
    for name in unit_map.linear_units():
        unit = unit_map.get(name)
        if pattern and pattern.search(unit.short_name(unit_map.block_prefix)):
            if unit.block not in tied:
                tied[unit.block] = Group(f"block {unit.block} tied[{tie}]", (), unit.block, f"tied[{tie}]")
                groups.append(tied[unit.block])
            tied[unit.block].units += (name,)
        else:
            groups.append(Group(name, (name,), unit.block, unit.short_name(unit_map.block_prefix)))
    if pattern and not tied:
        names = sorted({unit_map.get(n).short_name(unit_map.block_prefix) for n in unit_map.linear_units()})
        raise QuantsenseError(
            f"--tie {tie!r} matches no linear unit's name inside a block ({', '.join(names[:8])}"
            f"{' ...' if len(names) > 8 else ''}); fix the pattern (quantsense units lists the names)"
        )
    return groups + extra


def compile_tie(tie: str | None):
    if not tie:
        return None
    try:
        return re.compile(tie)
    except re.error as exc:
        raise QuantsenseError(f"--tie {tie!r} is not a valid regular expression: {exc}") from None


@dataclass
class Allocation:
    plan: Plan
    choices: dict[str, str | None]  # group name -> format name (None = FP32)
    predicted_loss: float
    avg_bits: float
    model_bytes: int
    groups: dict = field(default_factory=dict)  # group name -> {"block", "layer_kind"}


@dataclass
class Problem:
    """Loss and cost of every (group, option), and which options each group can take."""

    groups: list[Group]
    options: list[Format | None]
    loss: np.ndarray
    cost: np.ndarray
    allowed: np.ndarray
    scope_numel: int
    outside_bits: int


def build_problem(
    unit_map: UnitMap,
    model,
    groups: list[Group],
    losses: dict[tuple[str, str], float],
    candidates: list[Format] | Candidates,
    allow_fp32: bool = True,
    outside: Plan = Plan(),
) -> Problem:
    """``losses[(unit name, format name)]`` is the measured loss of that unit alone in that format; ``outside``: the
    formats of units outside the allocation (a quantized embedding), which a size budget counts as stored."""
    candidates = Candidates.resolve(unit_map, candidates)
    options: list[Format | None] = sorted(candidates, key=lambda f: (f.nominal_bits, f.name))
    options += [None] if allow_fp32 else []
    shape = (len(groups), len(options))
    cost, allowed = np.zeros(shape), np.ones(shape, dtype=bool)
    for g, group in enumerate(groups):
        for o, fmt in enumerate(options):
            allowed[g, o] = fmt is None or candidates.fits(group.units, fmt)
            if allowed[g, o]:
                cost[g, o] = sum(
                    storage_bits(unit_map.get(n).shape, fmt, unit_map.get(n).transposed) for n in group.units
                )
    loss = loss_matrix(groups, options, allowed, losses)
    scope_numel = sum(unit_map.get(n).numel for group in groups for n in group.units)
    outside_bits = 8 * model_bytes(model, unit_map, outside) - 32 * scope_numel
    return Problem(groups, options, loss, cost, allowed, scope_numel, outside_bits)


def loss_matrix(
    groups: list[Group], options: list[Format | None], allowed: np.ndarray, losses: dict[tuple[str, str], float]
) -> np.ndarray:
    """The loss of every allowed (group, option): the sum of its units' single-unit losses in that format (FP32: 0)."""
    loss = np.zeros(allowed.shape)
    for g, group in enumerate(groups):
        for o, fmt in enumerate(options):
            if fmt is not None and allowed[g, o]:
                loss[g, o] = sum(losses[(name, fmt.name)] for name in group.units)
    return loss


def smallest_budget(problem: Problem) -> tuple[float, int]:
    """The smallest feasible budget: (average bits per weight, whole-model bytes)."""
    cheapest = np.where(problem.allowed, problem.cost, np.inf).min(axis=1).sum()
    return cheapest / problem.scope_numel, int((cheapest + problem.outside_bits) // 8)


def budget_limit(problem: Problem, budget: Budget, candidates: list[Format]) -> float:
    """The budget in bits over the scope; an impossible one names the smallest feasible budget."""
    avg, size = smallest_budget(problem)
    limit = (
        budget.avg_bits * problem.scope_numel
        if budget.avg_bits is not None
        else 8 * budget.max_bytes - problem.outside_bits
    )
    if limit < avg * problem.scope_numel:
        need = (
            f"--avg-bits {math.ceil(avg * 1000) / 1000:.3f}"
            if budget.avg_bits is not None
            else f"--max-size {math.ceil(size / 1e4) / 100:.2f}MB"
        )
        names = " ".join(f.name for f in candidates)
        stuck = [
            g.name
            for g, row in zip(problem.groups, problem.allowed)
            if problem.options[-1] is None and not row[:-1].any()
        ]  # no candidate stores them: they stay FP32
        why = (
            f": {len(stuck)} of {len(problem.groups)} units ({', '.join(stuck[:2])}{', ...' if len(stuck) > 2 else ''}) "
            f"hold none of the candidates and stay FP32; add a candidate their rows hold (e.g. q8_0 or 4), or "
            f"--unit linear to place {names} where rows allow"
            if stuck
            else ""
        )
        raise QuantsenseError(
            f"budget {budget.label()} is impossible with candidates {names}: the smallest feasible is {need}{why}"
        )
    return limit


def solve(problem: Problem, limit: float) -> np.ndarray:
    """The chosen option index per group (exact: scaled losses, zero relative gap)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    n_g, n_o = problem.loss.shape
    scale = float(np.abs(problem.loss).max()) or 1.0
    loss = problem.loss / scale
    one_hot = np.zeros((n_g, n_g * n_o))
    for g in range(n_g):
        one_hot[g, g * n_o : (g + 1) * n_o] = 1
    constraints = [LinearConstraint(one_hot, 1, 1), LinearConstraint(problem.cost.reshape(1, -1), -np.inf, limit)]
    # a cost tie-break far below any loss difference prefers the smaller of equally good plans, deterministically
    tie_break = 1e-9 * problem.cost.reshape(-1) / problem.cost.max() / n_g
    upper = problem.allowed.reshape(-1).astype(float)
    with without_solver_chatter():
        result = milp(
            loss.reshape(-1) + tie_break,
            constraints=constraints,
            integrality=np.ones(n_g * n_o),
            bounds=Bounds(0, upper),
            options={"mip_rel_gap": 0.0},
        )
    if not result.success:
        raise QuantsenseError(f"the allocation solver failed: {result.message}")
    return np.rint(result.x).reshape(n_g, n_o).argmax(axis=1)


@contextmanager
def without_solver_chatter():
    """HiGHS (inside scipy's ``milp``) writes a debug line ("HighsMipSolverData::transformNewIntegerFeasibleSolution
    tmpSolver.run();") straight to the process's stdout on some problems, whatever ``disp`` says. Catch the C-level
    stdout while the solver runs; drop that line and pass anything else on to stderr."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):  # no file descriptor 1 (an embedding host): nothing to catch
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            sink.seek(0)
            other = [
                line
                for line in sink.read().decode(errors="replace").splitlines()
                if line.strip() and not line.startswith("HighsMipSolverData::")
            ]
            if other:
                print("\n".join(other), file=sys.stderr)


def allocate(
    unit_map: UnitMap,
    model,
    groups: list[Group],
    losses: dict[tuple[str, str], float],
    candidates: list[Format],
    budget: Budget,
    allow_fp32: bool = True,
    outside: Plan = Plan(),
) -> Allocation:
    """Exact minimum-loss choice of one option per group under ``budget`` (``outside``: see :func:`build_problem`)."""
    problem = build_problem(unit_map, model, groups, losses, candidates, allow_fp32, outside)
    chosen = solve(problem, budget_limit(problem, budget, candidates))
    mapping, choices = {}, {}
    for g, group in enumerate(groups):
        fmt = problem.options[chosen[g]]
        choices[group.name] = None if fmt is None else fmt.name
        if fmt is not None:
            mapping.update({n: fmt for n in group.units})
    rows = np.arange(len(groups))
    total_bits = float(problem.cost[rows, chosen].sum())
    return Allocation(
        plan=Plan.of(mapping),
        choices=choices,
        predicted_loss=float(problem.loss[rows, chosen].sum()),
        avg_bits=total_bits / problem.scope_numel,
        model_bytes=int((total_bits + problem.outside_bits) // 8),
        groups={g.name: g.describe() for g in groups},
    )
