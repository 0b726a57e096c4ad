"""A reduced sweep for allocation: estimate every (unit, format) loss, measure only where a decision hinges on it.

1. Every unit is measured once, in its anchor format (the candidate with the fewest bits: the largest, best-resolved
   loss), on the first data segment; a few of the most sensitive units also in a second format, so that the loss
   model's exponent is fitted (:mod:`quantsense.sweeps.loss_model`). Every other pair is estimated from its weight
   error, which costs no forward pass.
2. The allocator solves every budget on these values. It solves again with the values drawn at random within their
   uncertainty (an estimated pair: a log-normal factor with the loss model's spread, measured on the pairs it predicted
   before they were measured; a measured pair: a normal draw from its own interval, floored at zero, so that a loss
   measured as zero can still come out above its neighbours); a pair that some draw puts into a budget's plan and
   another keeps out of that same plan is one whose error could change the plan. Those pairs are measured (an estimated one on the first segment; a measured one on one more
   segment: sequential evaluation), the largest first, and the allocator solves again.
3. Each round, every budget's plan is itself measured on the first segment. After the first round of measurements
   the sweep stops as soon as each plan's measured interval contains the loss the allocator predicted for it (or after
   ``max_rounds``). While a plan misses, its own largest estimates are measured too, and then contended measured
   pairs on more segments.

The pieces of work come in as callables, so this module is plain logic: ``measure`` runs evaluations, ``solve``
allocates every budget. Nothing here knows a task or a format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from quantsense.sweeps.loss_model import LossModel, agreement, fit_loss_model

Pair = tuple[str, str]  # (unit, format name)
Measurement = tuple[float, float]  # (loss, its standard error, in the loss's own units)
Measure = Callable[[list[tuple[Pair, int]]], dict[Pair, Measurement]]  # pairs at a depth (number of segments)
Solve = Callable[[dict[Pair, float]], list[frozenset[Pair]]]  # values -> the pairs each budget's plan uses
CheckPlans = Callable[[list[frozenset[Pair]]], list[tuple[float, float]]]  # each plan's measured interval

MIN_SPREAD = 0.15  # the smallest relative uncertainty given to an estimate, however well the model has done so far
FIRST_SPREAD = 0.5  # before any estimate has been checked against a measurement


@dataclass
class Refinement:
    values: dict[Pair, float]  # every pair: its measurement where measured, else the estimate
    measured: dict[Pair, float]
    depth: dict[Pair, int]  # segments each measured pair was measured on
    predicted_before: dict[Pair, float]  # what the model predicted for a pair just before it was measured
    model: LossModel
    chosen: list[frozenset[Pair]]
    rounds: list[dict] = field(default_factory=list)  # per round: pairs measured, plans checked, whether they held

    @property
    def estimated(self) -> set[Pair]:
        return set(self.values) - set(self.measured)

    def agreement(self) -> dict:
        """The loss model's predictions against the measurements of the pairs it predicted before they were taken."""
        return agreement({p: self.measured[p] for p in self.predicted_before}, self.predicted_before)


def refine(
    pairs: list[Pair],
    errors: dict[Pair, float],
    anchor: str | dict[str, str],
    second: str | None,
    measure: Measure,
    solve: Solve,
    check: CheckPlans,
    max_depth: int,
    alpha_units: int = 8,
    per_round: int | None = None,
    max_rounds: int = 4,
    draws: int = 8,
    seed: int = 0,
    always: frozenset[Pair] = frozenset(),
    shared_scale: bool = False,
) -> Refinement:
    """Measure the anchors (``anchor``: one format for every unit, or each unit's own, for units some candidates cannot
    store; with ``shared_scale``, errors that are already predicted losses, only the units ``anchor`` names, and an
    unmeasured unit's loss is its error on the measured units' common scale), the ``always`` pairs (a format whose
    loss its weight error does not predict: one that quantizes activations too; they are left out of the loss model's
    fit) and ``alpha_units`` units at ``second``, then refine where the plans hinge (see above)."""
    units = list(dict.fromkeys(u for u, _ in pairs))
    per_round = per_round or max(4, math.ceil(0.03 * len(pairs)))
    found: dict[Pair, Measurement] = {}
    depth: dict[Pair, int] = {}
    predicted_before: dict[Pair, float] = {}

    def take(todo: list[tuple[Pair, int]]) -> None:
        found.update(measure(todo))
        depth.update(dict(todo))

    anchors = anchor if isinstance(anchor, dict) else {u: anchor for u in units}
    take(
        [((u, anchors[u]), 1) for u in units if u in anchors]
        + [(p, 1) for p in sorted(always) if p[1] != anchors.get(p[0])]
    )

    def weight_only(found_now: dict[Pair, Measurement]) -> dict[Pair, float]:
        kept = {p: v for p, (v, _) in found_now.items() if p not in always}
        return kept or {
            p: v for p, (v, _) in found_now.items()
        }  # every candidate measured everywhere: nothing to estimate

    if second is not None and alpha_units:
        first = fit_loss_model(weight_only(found), errors, shared_scale=shared_scale)
        if shared_scale:  # the largest measured losses: the errors already rank the units
            strength = {u: found[(u, anchors[u])][0] for u in units if (u, anchors.get(u)) in found}
        else:
            strength = first.scale
        strongest = sorted(units, key=lambda u: -strength.get(u, 0.0))[:alpha_units]
        take([((u, second), 1) for u in strongest if (u, second) in errors and (u, second) not in found])
    rng = np.random.default_rng(seed)
    refinement = None
    for number in range(1, max_rounds + 1):
        model = fit_loss_model(weight_only(found), errors, shared_scale=shared_scale)
        values = {p: found[p][0] if p in found else model.predict(p[0], errors[p]) for p in pairs}
        chosen = solve(values)
        intervals = check(chosen)
        held = [lo <= sum(values[p] for p in plan) <= hi for plan, (lo, hi) in zip(chosen, intervals)]
        contended = _contended(values, found, chosen, solve, _spread(found, predicted_before), draws, rng)
        todo = []
        if number < max_rounds and (number == 1 or not all(held)):  # round 1 always checks what the plans hinge on
            todo = _next_measurements(contended, chosen, held, values, found, depth, max_depth, per_round)
        round_info = {
            "round": number,
            "alpha": model.alpha,
            "contended": len(contended),
            "measured": len(todo),
            "plans_held": held,
        }
        refinement = Refinement(
            values,
            {p: v for p, (v, _) in found.items()},
            dict(depth),
            dict(predicted_before),
            model,
            chosen,
            (refinement.rounds if refinement else []) + [round_info],
        )
        if not todo:
            break
        for pair, _ in todo:
            if pair not in found:
                predicted_before[pair] = values[pair]
        take(todo)
    return refinement


def _spread(found: dict[Pair, Measurement], predicted_before: dict[Pair, float]) -> float:
    """The loss model's relative uncertainty: the spread of log(measured / predicted) over the pairs it predicted."""
    logs = [math.log(found[p][0] / v) for p, v in predicted_before.items() if v > 0 and found[p][0] > 0]
    if len(logs) < 5:
        return FIRST_SPREAD
    return max(MIN_SPREAD, float(np.sqrt(np.mean(np.square(logs)))))


def _contended(
    values: dict[Pair, float],
    found: dict[Pair, Measurement],
    chosen: list[frozenset[Pair]],
    solve: Solve,
    spread: float,
    draws: int,
    rng,
) -> set[Pair]:
    """Pairs that a budget's plan takes under some draw of the values within their uncertainty and not under another
    (judged plan by plan: a pair that moves from one budget's plan to another's changes both)."""
    keys = list(values)
    base = np.array([values[p] for p in keys])
    measured = np.array([p in found for p in keys])
    error = np.array([found[p][1] if p in found else 0.0 for p in keys])
    taken = [set(plan) for plan in chosen]  # per budget: every pair some draw (or the values themselves) took
    kept = [set(plan) for plan in chosen]  # per budget: the pairs every draw took
    for _ in range(draws):
        z = rng.standard_normal(len(keys))
        drawn = np.where(measured, np.maximum(base + error * z, 0.0), base * np.exp(spread * z - spread**2 / 2))
        for i, plan in enumerate(solve(dict(zip(keys, drawn.tolist())))):
            taken[i] |= plan
            kept[i] &= plan
    return set().union(*(t - k for t, k in zip(taken, kept)))


def _next_measurements(
    contended: set[Pair], chosen, held, values, found, depth, max_depth: int, per_round: int
) -> list[tuple[Pair, int]]:
    """What to measure next, at most ``per_round`` pairs. Estimates on one segment, the largest loss first: the
    contended ones, and while a plan misses its prediction, also that plan's own estimates. Then, while a plan
    misses, contended measured pairs on one more segment (up to ``max_depth``)."""
    estimates = {p for p in contended if p not in found}
    estimates |= {p for plan, ok in zip(chosen, held) if not ok for p in plan if p not in found}
    todo = [(p, 1) for p in sorted(estimates, key=lambda p: (-values[p], p))]
    if not all(held):
        deeper = [p for p in contended if p in found and depth[p] < max_depth]
        todo += [(p, depth[p] + 1) for p in sorted(deeper, key=lambda p: (-values[p], p))]
    return todo[:per_round]
