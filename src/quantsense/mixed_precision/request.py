"""An allocation's inputs resolved once (:func:`quantsense.inputs.allocation_request` builds and checks it) and handed
down whole, to the sweep that measures single-unit losses and to the solver."""

from __future__ import annotations

from dataclasses import dataclass, replace

from quantsense.mixed_precision.allocation import Budget, Group, budget_limit, build_problem
from quantsense.quantization.formats import Format
from quantsense.sweeps.candidates import Candidates


@dataclass(frozen=True)
class AllocationRequest:
    """An allocation's inputs resolved once against the workspace (:func:`allocation_request`) and handed down whole:
    the candidates (formats, and which weights each can store), the unit kind and its groups (``tie`` merged, the units
    ``outside`` the blocks chosen too), the objective and its metric key, and the budgets, each feasible from sizes."""

    candidates: Candidates
    unit: str
    tie: str | None
    objective: str
    key: str
    outside: tuple[str, ...]
    groups: tuple[Group, ...]
    budgets: tuple[Budget, ...] = ()

    @property
    def formats(self) -> list[Format]:
        return list(self.candidates)

    def with_budgets(self, ws, budgets) -> AllocationRequest:
        """The same request under ``budgets``, each checked feasible from sizes (no evaluation)."""
        budgets = tuple(Budget.of(b) for b in budgets)
        check_budgets(ws, self.groups, self.candidates, budgets)
        return replace(self, budgets=budgets)


def check_budgets(ws, groups, candidates: Candidates, budgets) -> None:
    """Every budget is for this workspace's model and feasible with these groups and candidates (from sizes alone)."""
    for budget in budgets:
        budget.check_model(ws.model_fp)
    if not budgets:
        return
    zero = {(name, f.name): 0.0 for group in groups for name in group.units for f in candidates}
    problem = build_problem(ws.units, ws.model, list(groups), zero, candidates, outside=ws.embedding_plan())
    for budget in budgets:
        budget_limit(problem, budget, list(candidates))
