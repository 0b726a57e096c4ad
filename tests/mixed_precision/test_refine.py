"""The reduced sweep's logic on synthetic units: it reaches the plans that full measurement gives, measuring less."""

import numpy as np
import pytest

from quantsense.mixed_precision.allocation import Group, Problem, solve
from quantsense.mixed_precision.refine import _contended, refine

FORMATS = {"f3": 3.0, "f4": 4.0, "f6": 6.0}  # name -> bits per weight
NUMEL = 1000


def _world(n_units=40, seed=0, odd=()):
    """True single-unit losses S_u * e^1.2 (units in ``odd`` follow e^0.6: the loss model mispredicts them)."""
    rng = np.random.default_rng(seed)
    units = [f"u{i:02d}" for i in range(n_units)]
    scale = {u: float(rng.lognormal(0, 1.2)) for u in units}
    errors = {(u, f): float(4.0**-bits * rng.uniform(0.8, 1.25)) for u in units for f, bits in FORMATS.items()}
    truth = {(u, f): scale[u] * errors[(u, f)] ** (0.6 if u in odd else 1.2) for u, f in errors}
    return units, errors, truth


def _solver(units, budgets):
    options = list(FORMATS)
    cost = np.array([[FORMATS[f] * NUMEL for f in options] for _ in units])
    problem = Problem(
        [Group(u, (u,)) for u in units],
        options,
        np.zeros(cost.shape),
        cost,
        np.ones(cost.shape, dtype=bool),
        NUMEL * len(units),
        0,
    )

    class _Fmt(str):
        name = property(lambda self: str(self))

    problem.options = [_Fmt(f) for f in options]

    def solve_all(values):
        problem.loss = np.array([[values[(u, f)] for f in options] for u in units])
        return [
            frozenset((u, options[o]) for u, o in zip(units, solve(problem, b * NUMEL * len(units)))) for b in budgets
        ]

    return solve_all


def _run(units, errors, truth, budgets, **kwargs):
    measured_calls = []

    def measure(todo):
        measured_calls.extend(todo)
        return {pair: (truth[pair] * (1 + 0.02 * (depth == 1)), truth[pair] * 0.05 / depth) for pair, depth in todo}

    solve_all = _solver(units, budgets)

    def check(plans):
        return [(0.9 * sum(truth[p] for p in plan), 1.1 * sum(truth[p] for p in plan)) for plan in plans]

    result = refine(list(errors), errors, "f3", "f4", measure, solve_all, check, max_depth=4, **kwargs)
    return result, solve_all(truth), measured_calls


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reaches_the_fully_measured_plans_measuring_a_fraction(seed):
    units, errors, truth = _world(seed=seed)
    budgets = [3.5, 4.5, 5.5]
    result, best, calls = _run(units, errors, truth, budgets)
    for got, want in zip(result.chosen, best):
        # the same plan, or one whose true loss is within 0.1 % of the optimum (a tie the data cannot break)
        assert sum(truth[p] for p in got) <= 1.001 * sum(truth[p] for p in want)
    assert len(result.measured) < 0.75 * len(errors)
    assert all(u in {p[0] for p in result.measured} for u in units)  # every unit measured at least once (its anchor)
    assert result.rounds[-1]["plans_held"] == [True, True, True]


def test_units_the_model_mispredicts_are_found_and_measured():
    odd = ("u03", "u11", "u27")
    units, errors, truth = _world(seed=4, odd=odd)
    budgets = [4.0, 5.0]
    result, best, _ = _run(units, errors, truth, budgets, alpha_units=4)
    for got, want in zip(result.chosen, best):
        assert sum(truth[p] for p in got) <= 1.01 * sum(truth[p] for p in want)
    for got, want in zip(result.chosen, best):  # the mispredicted units get the format full measurement gives them
        assert {p for p in got if p[0] in odd} == {p for p in want if p[0] in odd}
    assert any(
        p[0] in odd and p[1] != "f3" for p in result.predicted_before
    )  # ... because their estimates were checked


def test_an_exact_loss_model_needs_only_the_anchors_and_the_alpha_units():
    units, errors, truth = _world(seed=5)
    budgets = [4.5]
    exact = {p: v for p, v in truth.items()}

    def measure(todo):
        return {pair: (exact[pair], 0.001 * exact[pair]) for pair, _ in todo}

    solve_all = _solver(units, budgets)
    result = refine(
        list(errors),
        errors,
        "f3",
        "f4",
        measure,
        solve_all,
        lambda plans: [(0.99 * sum(exact[p] for p in pl), 1.01 * sum(exact[p] for p in pl)) for pl in plans],
        max_depth=4,
        alpha_units=5,
    )
    assert result.model.alpha == pytest.approx(1.2, rel=1e-6)
    assert result.chosen == solve_all(exact)
    assert result.agreement()["median_ratio"] in (None, pytest.approx(1.0, rel=1e-6))


def _cheaper_and_dearer(values):
    """Two budgets over two pairs: the first takes the pair with the smaller value, the second the other one."""
    low, high = sorted(values, key=lambda p: values[p])
    return [frozenset({low}), frozenset({high})]


def test_a_loss_measured_as_zero_is_still_drawn_within_its_interval():
    values = {("a", "f3"): 0.0, ("b", "f3"): 0.5}
    found = {("a", "f3"): (0.0, 1.0), ("b", "f3"): (0.5, 0.01)}  # a: zero, but its interval reaches far above b
    chosen = _cheaper_and_dearer(values)
    contended = _contended(values, found, chosen, _cheaper_and_dearer, 0.5, 16, np.random.default_rng(0))
    assert contended == {("a", "f3"), ("b", "f3")}
    tight = {("a", "f3"): (0.0, 0.01), ("b", "f3"): (0.5, 0.01)}  # both intervals far apart: nothing can swap
    assert _contended(values, tight, chosen, _cheaper_and_dearer, 0.5, 16, np.random.default_rng(0)) == set()


def test_contention_is_judged_per_budget_not_over_their_union():
    # whichever way the draws fall, the two budgets' plans together use both pairs; each budget's own choice swaps
    values = {("a", "f3"): 0.50, ("b", "f3"): 0.51}
    found = {p: (v, 0.05) for p, v in values.items()}
    contended = _contended(
        values, found, _cheaper_and_dearer(values), _cheaper_and_dearer, 0.5, 16, np.random.default_rng(0)
    )
    assert contended == set(values)
