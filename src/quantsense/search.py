"""Allocation on a workspace: single-unit losses (measured, or from a reduced sweep), the exact allocation under each
budget, and the frontier that measures every allocated, uniform, preset and hand plan; :func:`run_frontier` runs the
``allocate`` and ``frontier`` commands (every input checked first)."""

from __future__ import annotations

import time

from quantsense.inputs import allocation_request, metric_key
from quantsense.mixed_precision.allocation import Allocation, Budget, allocate as solve_allocation
from quantsense.mixed_precision.request import AllocationRequest
from quantsense.mixed_precision.presets import preset_name, preset_plan
from quantsense.mixed_precision.strategies import frontier_levels, strategy_plans, uniform_plan
from quantsense.quantization.formats import Format
from quantsense.quantization.plan import Plan
from quantsense.quantization.size import average_bits, model_bytes
from quantsense.mixed_precision.reduced import estimated_pairs, reduced_sweep, screened_block_ranking
from quantsense.results import FrontierResult, StudyResult
from quantsense.study import _begin, block_ranking, evaluate_plans, sensitivity
from quantsense.sweeps.candidates import Candidates
from quantsense.sweeps.fisher import check_not_streamed
from quantsense.sweeps.record import ExhaustiveRecord, SweepRecord
from quantsense.sweeps.sweep import sweep_units
from quantsense.workspace import Workspace


def unit_losses(
    ws: Workspace, candidates: list[Format], unit: str, objective: str, outside: tuple[str, ...] = ()
) -> dict[tuple[str, str], float]:
    """Measured loss of every unit alone in every candidate format (from the store when finished); ``outside``: units
    outside the blocks measured too."""
    sens = sensitivity(ws, candidates, unit, include_extra=tuple(outside))
    key = metric_key(ws, objective)
    losses = {}
    for row in sens.rows:
        names = ws.units.block_units(row["block"]) if unit == "block" and row["block"] is not None else [row["unit"]]
        value = max(row[key], 0.0)  # a unit that measured better than FP32 is not worth bits
        for name in names:  # a block's loss is carried by its units so that groups can sum them
            losses[(name, row["format"])] = value / len(names)
    return losses


def allocate(
    ws: Workspace,
    budget: Budget,
    candidates=None,
    unit: str = "block",
    tie: str | None = None,
    objective: str = "kl",
    reduced: bool | str = False,
    outside: str = "fp32",
) -> Allocation:
    """The optimal plan under one budget (a :class:`Budget` or average bits per weight), from single-unit losses
    (the plan itself is not measured here: see :func:`frontier`)."""
    return allocations(ws, [budget], candidates, unit, tie, objective, reduced, outside)[0][1]


def allocations(
    ws: Workspace,
    budgets: list[Budget],
    candidates=None,
    unit: str = "block",
    tie: str | None = None,
    objective: str = "kl",
    reduced: bool | str = False,
    outside: str = "fp32",
) -> list[tuple[str, Allocation]]:
    """The optimal plan under each budget (exact MILP over single-unit losses); see :func:`sweep_and_allocate`."""
    return sweep_and_allocate(ws, budgets, candidates, unit, tie, objective, reduced, outside)[0]


def sweep_and_allocate(
    ws: Workspace,
    budgets: list[Budget],
    candidates=None,
    unit: str = "block",
    tie: str | None = None,
    objective: str = "kl",
    reduced: bool | str = False,
    outside: str = "fp32",
) -> tuple[list[tuple[str, Allocation]], SweepRecord]:
    """The optimal plan under each budget (exact MILP over single-unit losses) and what the sweep did.

    By default every (unit, format) is measured on all the data. ``reduced``: a reduced sweep
    (:mod:`quantsense.mixed_precision.reduced`, the command line's default): each unit measured once on a data segment, the rest
    estimated, and measured where a plan hinges on it; a string names how it estimates (``"weight-error"``, what
    ``True`` means, or ``"fisher"``: :func:`quantsense.mixed_precision.reduced.reduced_sweep`). ``outside``: ``"allocate"`` adds the
    token embedding and an untied output head to the allocation (see :meth:`Workspace.allocated_outside`)."""
    budgets = [Budget.of(b) for b in budgets]
    extra = ws.allocated_outside(outside, [b.preset for b in budgets if b.preset])
    request = allocation_request(ws, budgets, _candidates(ws, candidates), unit, tie, objective, extra)
    return allocate_request(ws, request, reduced)


def allocate_request(
    ws: Workspace, request: AllocationRequest, reduced: bool | str = False
) -> tuple[list[tuple[str, Allocation]], SweepRecord]:
    """:func:`sweep_and_allocate` on a request resolved once (:func:`quantsense.inputs.allocation_request`)."""
    if not reduced:
        started, tokens = time.perf_counter(), ws.batches.num_tokens
        losses = unit_losses(ws, request.candidates, request.unit, request.objective, request.outside)
        pairs = len(sweep_units(ws.units, request.unit, request.outside)) * len(request.candidates)
        full = (pairs + 1) * tokens  # every pair and the FP32 reference on all the data
        record = ExhaustiveRecord(
            pairs=pairs,
            measured=pairs,
            estimated=0,
            token_evaluations=full,
            full_token_evaluations=full,
            seconds=time.perf_counter() - started,
        )
    else:
        estimate = reduced if isinstance(reduced, str) else "weight-error"
        sweep = reduced_sweep(ws, request, seed=ws.options.seed, estimate=estimate)
        losses, record = sweep.losses, sweep.record
    outside = ws.embedding_plan()  # a size budget counts the embedding as it will be stored
    groups = list(request.groups)
    plans = [
        (
            f"allocated@{b.label()}",
            solve_allocation(ws.units, ws.model, groups, losses, request.candidates, b, outside=outside),
        )
        for b in request.budgets
    ]
    return plans, record


def _candidates(ws: Workspace, candidates) -> Candidates:
    """The candidate formats (the task's default ones when none are given) resolved against the model's weights."""
    if isinstance(candidates, Candidates):
        return candidates
    return Candidates.resolve(ws.units, ws.formats(candidates or ws.task.default_candidates))


def default_budgets(ws: Workspace, candidates=None) -> list[Budget]:
    """The average bits of each uniform candidate below 16 bits, and the midpoints between them."""
    fmts = _candidates(ws, candidates)
    sizes = sorted({round(average_bits(ws.units, uniform_plan(ws.units, f)), 3) for f in fmts if f.nominal_bits < 16})
    mids = [round((a + b) / 2, 3) for a, b in zip(sizes, sizes[1:])]
    return [Budget(avg_bits=v) for v in sorted(set(sizes + mids))]


def frontier(
    ws: Workspace,
    budgets: list[Budget] | None = None,
    candidates=None,
    unit: str = "block",
    tie: str | None = None,
    objective: str = "kl",
    reduced: bool | str = False,
    presets=(),
    outside: str = "fp32",
    given: dict[str, Plan] | None = None,
) -> FrontierResult:
    """Allocated plans over budgets, uniform baselines and hand strategies, all measured; predicted vs measured.
    ``reduced``: the single-unit losses come from a reduced sweep (see :func:`sweep_and_allocate`) and the hand strategies'
    block ranking from the first data segment. ``presets``: llama.cpp presets measured too, each with an allocation
    at its size (:func:`with_presets`). ``outside``: what the allocations do with the token embedding and an
    untied output head: ``"allocate"`` them too (a preset's budget is then its whole size), keep each ``"preset"``'s own
    types, or leave them ``"fp32"`` (or at ``--embedding``'s format). ``given``: other plans (e.g. read from GGUF files
    with :func:`quantsense.backends.llama_cpp.plans.plan_from_gguf`) measured beside; an allocation never returns a plan that measures
    worse than a given or preset plan within its budget (that plan is returned for the budget instead, and said)."""
    request, preset_plans, kept = frontier_request(ws, budgets, candidates, unit, tie, objective, presets, outside)
    return _frontier(ws, request, reduced, preset_plans, kept, given)


def frontier_request(
    ws: Workspace,
    budgets: list[Budget] | None = None,
    candidates=None,
    unit: str = "block",
    tie: str | None = None,
    objective: str = "kl",
    presets=(),
    outside: str = "fp32",
) -> tuple[AllocationRequest, dict[str, Plan], dict[str, Plan]]:
    """A frontier's inputs, every one checked from sizes (no evaluation): the allocation request under the budgets given
    (else one per uniform candidate's size and the midpoints) and each preset's own; the preset plans measured beside;
    per preset the types it keeps outside the blocks (see :func:`with_presets`)."""
    fmts = _candidates(ws, candidates)
    budgets = [Budget.of(b) for b in budgets] if budgets else [] if presets else default_budgets(ws, fmts)
    extra = ws.allocated_outside(outside, [*presets, *(b.preset for b in budgets if b.preset)])  # the mode, first
    budgets, preset_plans, kept = with_presets(ws, budgets, presets, outside)
    return allocation_request(ws, budgets, fmts, unit, tie, objective, extra), preset_plans, kept


def _frontier(
    ws: Workspace,
    request: AllocationRequest,
    reduced: bool | str,
    preset_plans: dict[str, Plan],
    kept: dict[str, Plan],
    given: dict[str, Plan] | None,
) -> FrontierResult:
    allocated, sweep = allocate_request(ws, request, reduced)
    budgets, fmts, unit, key = list(request.budgets), request.formats, request.unit, request.key
    named: dict[str, Plan] = {name: with_outside(a.plan, b, kept) for (name, a), b in zip(allocated, budgets)}
    identity = {name: {"kind": "allocated", "budget": b.to_dict()} for (name, _), b in zip(allocated, budgets)}
    named.update(preset_plans)
    identity.update({name: {"kind": "preset"} for name in preset_plans})
    named.update(given or {})
    identity.update({name: {"kind": "given"} for name in given or {}})
    skipped = {}
    for fmt in sorted(fmts, key=lambda f: -f.nominal_bits):
        why = request.candidates.first_misfit(ws.units.linear_units(), fmt)
        if why:  # e.g. q4_K on a model with 576-wide rows: no uniform plan exists (a preset is llama.cpp's answer)
            skipped[f"uniform {fmt.name}"] = why
            continue
        named[f"uniform {fmt.name}"] = uniform_plan(ws.units, fmt)
        identity[f"uniform {fmt.name}"] = {"kind": "uniform", "format": fmt.name}
    rank_fmt, levels, why = frontier_levels(fmts, ws.options.scheme, ws.format, ws.units)
    if levels is None:
        skipped["hand strategies"] = why
    else:
        ranking = screened_block_ranking(ws, rank_fmt) if reduced else block_ranking(ws, rank_fmt)
        for name, (plan, _) in strategy_plans(ws.units, ranking, levels).items():
            named[name], identity[name] = plan, {"kind": "hand"}
    named = {name: ws.finish(plan) for name, plan in named.items()}  # saved as measured, with --embedding's format
    rows = evaluate_plans(ws, named, desc="frontier")
    sweep.embedding = ws.embedding_loss(key).get(
        "embedding"
    )  # --embedding's table alone, measured: in every prediction
    predicted = {name: a.predicted_loss + (sweep.embedding or {}).get("loss", 0.0) for name, a in allocated}
    estimated = {name: estimated_pairs(ws, a.plan, unit, sweep) for name, a in allocated} if reduced else {}
    for row in rows:
        row.update(identity[row["plan"]])
        row["predicted_loss"] = predicted.get(row["plan"])
        row["estimated_pairs"] = estimated.get(row["plan"])
        row["measured_over_predicted"] = row[key] / row["predicted_loss"] if row["predicted_loss"] else None
    groups = {name: info for _, a in allocated for name, info in a.groups.items()}
    preferred = better_measured(rows, [name for name, _ in allocated], budgets, key)
    return FrontierResult(
        request.objective,
        unit,
        [f.name for f in fmts],
        rows,
        {name: named[preferred.get(name, name)].to_json_dict() for name, _ in allocated},
        {name: dict(a.choices) for name, a in allocated},
        groups,
        sweep,
        skipped,
        preferred,
    )


def better_measured(rows: list[dict], allocated: list[str], budgets: list[Budget], key: str) -> dict[str, str]:
    """Allocated plan name -> the given or preset plan that fits its budget and measured a lower ``key``, where one did:
    the allocation rests on single-unit losses, a plan measured whole is the better evidence."""
    by_name = {row["plan"]: row for row in rows}
    out = {}
    for name, budget in zip(allocated, budgets):
        cap = by_name.get(f"preset {budget.preset}", {}).get("model_mb") if budget.preset else None
        fitting = [
            r
            for r in rows
            if r["kind"] in ("given", "preset") and _within(r, budget) and (cap is None or r["model_mb"] <= cap + 1e-9)
        ]  # a preset's size bounds the whole model too
        best = min(fitting, key=lambda r: r[key], default=None)
        if best is not None and best[key] < by_name[name][key]:
            out[name] = best["plan"]
    return out


def _within(row: dict, budget: Budget) -> bool:
    if budget.max_bytes is not None:
        return row["model_mb"] * 1e6 <= budget.max_bytes + 1
    return row["avg_bits"] <= budget.avg_bits + 1e-9


def run_frontier(
    ws: Workspace,
    budgets: list[Budget] | None = None,
    candidates=None,
    unit: str = "block",
    tie: str | None = None,
    objective: str = "kl",
    argv: list[str] | None = None,
    on_phase=None,
    reduced: bool | str = False,
    presets=(),
    outside: str = "fp32",
    given: dict[str, Plan] | None = None,
) -> StudyResult:
    """Baseline and frontier (``quantsense allocate`` is one budget), every budget checked from sizes first."""
    request, preset_plans, kept = frontier_request(ws, budgets, candidates, unit, tie, objective, presets, outside)
    if reduced == "fisher":
        check_not_streamed(ws.units)
    result, notify = _begin(ws, argv, on_phase)
    notify("baseline", result)
    result.frontier = _frontier(ws, request, reduced, preset_plans, kept, given)
    notify("frontier", result)
    result.formats = ws.format_table()
    return result


# ------------------------------------------------------------------ presets (a runtime's named plans) as budgets


def preset_budget(ws: Workspace, preset: str, outside: str = "allocate") -> Budget:
    """An allocation budget equal to ``preset``'s on this workspace's model: its whole model's bytes, for an allocation
    that chooses the token embedding and output head too (``outside="allocate"``), or its average bits per block linear
    weight, for one that takes the preset's own types outside the blocks (``"preset"``); either way the allocated file is
    no larger. ``qs.frontier(ws, [budget], outside=...)`` measures the preset beside it."""
    return _budget_of(ws, preset, preset_plan(ws, preset), outside)[0]


def _budget_of(ws: Workspace, preset: str, plan: Plan, outside: str) -> tuple[Budget, Plan | None]:
    if outside == "allocate":
        return Budget(
            max_bytes=model_bytes(ws.model, ws.units, plan), preset=preset_name(preset), model=ws.model_fp
        ), None
    linears = set(ws.units.linear_units())
    kept = Plan.of({name: fmt for name, fmt in plan.assignments if name not in linears})
    bits = average_bits(ws.units, plan, scope=sorted(linears))
    return Budget(avg_bits=bits, preset=preset_name(preset), model=ws.model_fp), kept


def with_presets(
    ws: Workspace, budgets: list[Budget], presets, outside: str = "preset"
) -> tuple[list[Budget], dict[str, Plan], dict[str, Plan]]:
    """``budgets`` and each preset's own budget; the preset plans to measure beside the allocations (``preset Q4_K_M``);
    with ``outside="preset"``, per preset the types it gives outside the blocks, which an allocation at its size takes
    too (with ``"allocate"`` the budget is the preset's whole size and the allocation chooses those units itself)."""
    budgets, named, kept = list(budgets), {}, {}
    for budget in budgets:
        budget.check_model(ws.model_fp)  # a preset's budget from another model is refused before anything is built
    for preset in dict.fromkeys([*(preset_name(p) for p in presets), *(b.preset for b in budgets if b.preset)]):
        named[f"preset {preset}"] = plan = preset_plan(ws, preset)
        budget, types = _budget_of(ws, preset, plan, "allocate" if outside == "allocate" else "preset")
        if types is not None:
            kept[preset] = types
        if not any(b.preset == preset for b in budgets):  # a budget given as qs.preset_budget(ws, preset) is this one
            budgets.append(budget)
    return budgets, named, kept


def with_outside(plan: Plan, budget: Budget, outside: dict[str, Plan]) -> Plan:
    """An allocated plan with its preset's types outside the blocks (unchanged for a budget without a preset)."""
    extra = outside.get(budget.preset) if budget.preset else None
    return Plan.of({**plan.as_dict(), **extra.as_dict()}) if extra else plan
