"""Every input a phase takes, checked against the workspace before the first evaluation.

The API and the command line share these checks (and their one-line messages): a study refuses a bad
format, unit, view, metric, block, plan file, ranking, budget or calibration file before any work.
"""

from __future__ import annotations

from pathlib import Path

from quantsense.config import LOSS_METRICS, UNIT_KINDS, VIEWS
from quantsense.errors import QuantsenseError
from quantsense.mixed_precision.allocation import compile_tie, make_groups
from quantsense.mixed_precision.request import AllocationRequest
from quantsense.quantization.plan import BlockPlan, Plan
from quantsense.sweeps.candidates import Candidates
from quantsense.sweeps.sweep import build_entries, skipped_pairs
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
    """A sweep's formats (resolved against the model's weights), views, ranking key and entries, every argument checked
    (no evaluation)."""
    check_choice(unit, UNIT_KINDS, "unit")
    for view in views:
        check_choice(view, VIEWS, "view")
    for index in blocks or ():
        ws.units.block_units(index)  # a block index out of range is refused now
    candidates = Candidates.resolve(
        ws.units, formats if isinstance(formats, Candidates) else ws.formats(formats or ws.task.default_formats)
    )
    views = tuple(dict.fromkeys(views))
    key = metric_key(ws, rank_by)
    skipped_pairs(ws.units, candidates, unit, include_extra, blocks)  # a format that fits no unit is refused here
    ws.check_intervals()
    return candidates, views, key, build_entries(ws.units, candidates, unit, views, include_extra, blocks)


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


def allocation_request(
    ws: Workspace,
    budgets,
    candidates,
    unit: str = "block",
    tie: str | None = None,
    objective: str = "kl",
    outside: tuple[str, ...] = (),
) -> AllocationRequest:
    """Every allocation input checked from sizes alone (no evaluation) and resolved once: the candidate formats against
    every weight, the groups, the objective, and that every budget is feasible."""
    check_choice(unit, UNIT_KINDS, "unit")
    key = metric_key(ws, objective)
    compile_tie(tie)  # a bad regex is refused even where --unit block leaves it unused
    groups = tuple(make_groups(ws.units, unit, tie, outside))
    resolved = Candidates.resolve(ws.units, candidates)
    linears = ws.units.linear_units()
    for fmt in resolved:  # a candidate no unit can take would only make every budget look impossible
        if not any(resolved.fits((name,), fmt) for name in linears):
            raise QuantsenseError(
                f"candidate {fmt.name} fits no linear unit of this model: {resolved.why(linears[0], fmt)}; "
                "drop it from --candidates"
            )
    request = AllocationRequest(resolved, unit, tie, objective, key, tuple(outside), groups)
    request = request.with_budgets(ws, budgets)
    ws.check_intervals()
    return request
