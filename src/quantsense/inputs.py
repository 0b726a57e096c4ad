"""Every input a phase takes, checked against the workspace before the first evaluation.

The API and the command line share these checks (and their one-line messages): a study refuses a bad
format, unit, view, metric, block, plan file, ranking, budget or calibration file before any work.
"""

from __future__ import annotations

from pathlib import Path

from quantsense.config import LOSS_METRICS, UNIT_KINDS, VIEWS
from quantsense.errors import QuantsenseError
from quantsense.mixed_precision.allocation import Budget, Group, budget_limit, build_problem, compile_tie, make_groups
from quantsense.quantization.formats import Format
from quantsense.quantization.plan import BlockPlan, Plan
from quantsense.sweeps.sweep import build_entries, fits, skipped_pairs
from quantsense.workspace import Workspace


def check_choice(value: str, allowed, what: str) -> None:
    if value not in allowed:
        raise QuantsenseError(f"unknown {what} {value!r}; use one of {', '.join(allowed)}")


def metric_key(ws: Workspace, metric: str) -> str:
    """``kl`` -> the mean-KL key; ``loss`` -> the task's loss key (accuracy drop, NLL increase)."""
    check_choice(metric, LOSS_METRICS, "metric")
    return "kl_mean" if metric == "kl" else ws.task.loss.key


def sweep_inputs(
    ws: Workspace,
    formats=None,
    unit: str = "block",
    views=("only",),
    include_extra: bool = False,
    rank_by: str = "kl",
    blocks: list[int] | None = None,
):
    """A sweep's formats, views, ranking key and entries, every argument checked (no evaluation)."""
    check_choice(unit, UNIT_KINDS, "unit")
    for view in views:
        check_choice(view, VIEWS, "view")
    for index in blocks or ():
        ws.units.block_units(index)  # a block index out of range is refused now
    fmts = ws.formats(formats or ws.task.default_formats)
    views = tuple(dict.fromkeys(views))
    key = metric_key(ws, rank_by)
    skipped_pairs(ws.units, fmts, unit, include_extra, blocks)  # a format that fits no unit is refused here
    ws.check_intervals()
    return fmts, views, key, build_entries(ws.units, fmts, unit, views, include_extra, blocks)


def calibration(ws: Workspace, calibration_data: str, size: int = 128):
    """(calibration examples, their batches): a seeded sample of ``size`` from the file, none in the evaluation data.
    Cheap (no evaluation), so commands call it first to refuse a bad file before any work."""
    calib, batches = ws.task.calibration_batches(
        calibration_data, size, ws.tokenizer, ws.id2label(), ws.data, ws.options.seed
    )
    ws.task.check_model(ws.model, batches, ws.source)
    return calib, batches


def load_plan(ws: Workspace, path: str) -> Plan:
    """A plan file resolved against this model (block plans to units), every unit name checked."""
    plan = Plan.load(path)
    try:
        return as_plan(ws, plan)  # every unit name and every weight's shape against its format
    except QuantsenseError as exc:
        where = f"plan file {path}"
        raise QuantsenseError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None


def as_plan(ws: Workspace, plan: Plan | BlockPlan | str | Path) -> Plan:
    """A plan given as a :class:`Plan`, a :class:`BlockPlan` or a plan file, resolved and checked against this model."""
    if isinstance(plan, (str, Path)):
        return load_plan(ws, str(plan))
    if isinstance(plan, BlockPlan):
        plan = plan.resolve(ws.units.all_block_units())
    if not isinstance(plan, Plan):
        raise QuantsenseError(f"a plan is a Plan, a BlockPlan or a plan file path, got {type(plan).__name__}")
    ws.applier.check(plan)
    for name, fmt in plan.assignments:  # an imatrix-weighted format must use this workspace's own --imatrix
        used = fmt.calibration()
        if used is not None and used != ws.imatrix:
            raise QuantsenseError(
                f"{name} is planned as {fmt.label()} with imatrix {used.fingerprint}; pass --imatrix "
                "with that importance matrix file"
                + (f" (this run's is {ws.imatrix.fingerprint})" if ws.imatrix is not None else "")
            )
    ws.record_formats(f for _, f in plan.assignments)
    return plan


def check_ranking(ws: Workspace, ranking) -> list[int]:
    """A block ranking lists every block index exactly once (the strategies split it into thirds); as plain ints."""
    import numbers

    blocks = list(range(ws.units.num_blocks))
    items = list(ranking) if not isinstance(ranking, (str, bytes, dict)) and hasattr(ranking, "__iter__") else None
    whole = items is not None and all(isinstance(b, numbers.Integral) and not isinstance(b, bool) for b in items)
    if not whole or sorted(int(b) for b in items) != blocks:
        raise QuantsenseError(
            f"a block ranking lists every block 0..{len(blocks) - 1} exactly once, most sensitive first "
            f"(e.g. sens.block_ranking()), got {ranking!r}"
        )
    return [int(b) for b in items]


def check_allocation(
    ws: Workspace,
    budgets: list[Budget],
    candidates: list[Format],
    unit: str = "block",
    tie: str | None = None,
    outside: tuple[str, ...] = (),
) -> list[Group]:
    """The allocation groups, after checking from sizes alone (no evaluation) that every budget is feasible."""
    check_choice(unit, UNIT_KINDS, "unit")
    for budget in budgets:
        budget.check_model(ws.model_fp)
    compile_tie(tie)  # a bad regex is refused even where --unit block leaves it unused
    groups = make_groups(ws.units, unit, tie, outside)
    for fmt in candidates:  # a candidate no unit can take would only make every budget look impossible
        if not any(fits(ws.units, (name,), fmt) for name in ws.units.linear_units()):
            try:
                fmt.check_unit(ws.units.get(ws.units.linear_units()[0]))
            except QuantsenseError as exc:  # the format's own reason, for the first unit
                raise QuantsenseError(
                    f"candidate {fmt.name} fits no linear unit of this model: {exc}; drop it from --candidates"
                ) from None
    zero = {(name, f.name): 0.0 for group in groups for name in group.units for f in candidates}
    problem = build_problem(ws.units, ws.model, groups, zero, candidates, outside=ws.embedding_plan())
    for budget in budgets:
        budget_limit(problem, budget, candidates)
    ws.check_intervals()
    return groups
