"""The study as library calls: each phase is a function of a :class:`~quantsense.workspace.Workspace`
returning a typed result; :func:`run_study` runs the reference study end to end.

    import quantsense as qs
    ws = qs.open_workspace("models/minilm-sst2", data="validation.tsv")
    sens = qs.sensitivity(ws, ["int8", "int4"])
    print(sens.block_ranking())
    front = qs.frontier(ws, budgets=[4.5], candidates=["int4", "int8"])

The CLI is a thin layer over these functions; notebooks and tests call the same code.
"""

from __future__ import annotations

from pathlib import Path

from quantsense.config import LOSS_METRICS, UNIT_KINDS, VIEWS
from quantsense.errors import QuantsenseError
from quantsense.mixed_precision.allocation import (
    Allocation,
    Budget,
    Group,
    allocate as solve_allocation,
    budget_limit,
    build_problem,
    compile_tie,
    make_groups,
)
from quantsense.mixed_precision.strategies import Levels, blocks_plan, strategy_plans, uniform_plan
from quantsense.quantization.formats import Format
from quantsense.quantization.plan import BlockPlan, Plan
from quantsense.quantization.size import average_bits, model_bytes
from quantsense.results import FrontierResult, PlanRows, SensitivityResult, StudyResult, provenance
from quantsense.sweeps.ranking import rank_rows
from quantsense.sweeps.sweep import build_entries, run_sweep
from quantsense.workspace import Workspace


def _check_choice(value: str, allowed, what: str) -> None:
    if value not in allowed:
        raise QuantsenseError(f"unknown {what} {value!r}; use one of {', '.join(allowed)}")


def metric_key(ws: Workspace, metric: str) -> str:
    """``kl`` -> the mean-KL key; ``loss`` -> the task's loss key (accuracy drop, NLL increase)."""
    _check_choice(metric, LOSS_METRICS, "metric")
    return "kl_mean" if metric == "kl" else ws.task.loss.key


def baseline(ws: Workspace) -> dict:
    """Phase 1: the unquantized model's figures (accuracy, or perplexity)."""
    return ws.task.baseline(ws.reference(), ws.data)


def sensitivity(ws: Workspace, formats=None, unit: str = "block", views=("only",), include_extra: bool = False,
                rank_by: str = "kl", blocks: list[int] | None = None) -> SensitivityResult:
    """Phase 2: every unit x format x view measured against FP32, and a ranking per (view, format)."""
    fmts, views, key, entries = sweep_inputs(ws, formats, unit, views, include_extra, rank_by, blocks)
    rows = run_sweep(ws.engine, ws.applier, ws.units, entries, ws.compare, ws.task.loss.key, desc=f"{unit} sweep")
    rankings = {f"{view}@{f.name}": rank_rows([r for r in rows if r["format"] == f.name and r["view"] == view], key, view)
                for f in fmts for view in views}
    return SensitivityResult(unit, [f.name for f in fmts], list(views), key, rows, rankings)


def sweep_inputs(ws: Workspace, formats=None, unit: str = "block", views=("only",), include_extra: bool = False,
                 rank_by: str = "kl", blocks: list[int] | None = None):
    """A sweep's formats, views, ranking key and entries, every argument checked (no evaluation)."""
    _check_choice(unit, UNIT_KINDS, "unit")
    for view in views:
        _check_choice(view, VIEWS, "view")
    fmts = ws.formats(formats or ws.task.default_formats)
    views = tuple(dict.fromkeys(views))
    key = metric_key(ws, rank_by)
    return fmts, views, key, build_entries(ws.units, fmts, unit, views, include_extra, blocks)


def calibration(ws: Workspace, calibration_data: str, size: int = 128):
    """(calibration examples, their batches): a seeded sample of ``size`` from the file, none in the evaluation data.
    Cheap (no evaluation), so commands call it first to refuse a bad file before any work."""
    calib, batches = ws.task.calibration_batches(calibration_data, size, ws.tokenizer, ws.id2label(), ws.data, ws.options.seed)
    ws.task.check_model(ws.model, batches, ws.source)
    return calib, batches


def proxies(ws: Workspace, calibration_data: str, size: int = 128, formats=None, unit: str = "block") -> dict:
    """Cheap proxies per unit and their Spearman correlation with the measured sweep."""
    from quantsense.engine import Evaluator
    from quantsense.sweeps.proxies import fisher_diagonal, proxy_correlations, proxy_rows

    calib, batches = calibration(ws, calibration_data, size)
    calib_eval = Evaluator(ws.model, ws.units, batches, ws.device, applier=ws.applier, head=ws.task.head())
    measured = sensitivity(ws, formats, unit)
    fisher = fisher_diagonal(ws.model, ws.units, calib_eval.device_batches(), calib.labels)
    entries = build_entries(ws.units, ws.formats(measured.formats), unit, ("only",))
    rows = proxy_rows(entries, ws.applier, calib_eval, calib_eval.reference(), fisher)
    return {"calibration": {"source": calib.source, "examples": len(calib), "disjoint_from_evaluation": True},
            "unit": unit, "rows": rows, "correlations": proxy_correlations(rows, measured.rows, ws.task.loss.key)}


def evaluate_plans(ws: Workspace, named: dict[str, Plan], desc: str = "plans") -> list[dict]:
    """Measure named plans: a row per plan with the task's paired metrics and the plan's size."""
    for plan in named.values():
        ws.applier.check(plan)  # every plan's names and shapes before the first evaluation
    reference = ws.reference()
    results = ws.engine.evaluate_many(list(named.items()), desc=desc)
    fp32_bytes = model_bytes(ws.model, ws.units, Plan())
    rows = []
    for name, plan in named.items():
        size = model_bytes(ws.model, ws.units, plan)
        rows.append({"plan": name, **ws.compare(reference, results[name]), "avg_bits": average_bits(ws.units, plan),
                     "model_mb": size / 1e6, "compression": fp32_bytes / size, "formats": plan.format_counts()})
    return rows


def load_plan(ws: Workspace, path: str) -> Plan:
    """A plan file resolved against this model (block plans to units), every unit name checked."""
    plan = Plan.load(path)
    try:
        return as_plan(ws, plan)  # every unit name and every weight's shape against its format
    except QuantsenseError as exc:
        raise QuantsenseError(f"plan file {path}: {exc}") from None


def as_plan(ws: Workspace, plan: Plan | BlockPlan | str | Path) -> Plan:
    """A plan given as a :class:`Plan`, a :class:`BlockPlan` or a plan file, resolved and checked against this model."""
    if isinstance(plan, (str, Path)):
        return load_plan(ws, str(plan))
    if isinstance(plan, BlockPlan):
        plan = plan.resolve(ws.units.all_block_units())
    if not isinstance(plan, Plan):
        raise QuantsenseError(f"a plan is a Plan, a BlockPlan or a plan file path, got {type(plan).__name__}")
    ws.applier.check(plan)
    return plan


def block_ranking(ws: Workspace, fmt: str | Format | None = None) -> list[int]:
    """Blocks, most sensitive first, by a per-block sweep at ``fmt`` (default: the task's lowest default format)."""
    fmt = ws.format(fmt or ws.task.default_ablation_format)
    return sensitivity(ws, [fmt]).block_ranking(fmt.name)


def check_ranking(ws: Workspace, ranking) -> list[int]:
    """A block ranking lists every block index exactly once (the strategies split it into thirds); as plain ints."""
    import numbers

    blocks = list(range(ws.units.num_blocks))
    items = list(ranking) if not isinstance(ranking, (str, bytes, dict)) and hasattr(ranking, "__iter__") else None
    whole = items is not None and all(isinstance(b, numbers.Integral) and not isinstance(b, bool) for b in items)
    if not whole or sorted(int(b) for b in items) != blocks:
        raise QuantsenseError(f"a block ranking lists every block 0..{len(blocks) - 1} exactly once, most sensitive first "
                              f"(e.g. sens.block_ranking()), got {ranking!r}")
    return [int(b) for b in items]


def mixed(ws: Workspace, ranking: list[int] | None = None, plan_files=(), rank_format: str | None = None) -> PlanRows:
    """Phase 3: the reference's three strategies, derived from ``ranking`` (default: measured), plus plan files."""
    rank_fmt = ws.format(rank_format or ws.task.default_ablation_format)
    if ranking is not None:
        ranking = check_ranking(ws, ranking)
    plan_paths = {f"file:{Path(path).name}": load_plan(ws, path) for path in plan_files}  # checked before any evaluation
    ranking = ranking if ranking is not None else block_ranking(ws, rank_fmt)
    named, by_block = {}, {}
    for name, (plan, formats) in strategy_plans(ws.units, ranking, Levels.for_family(rank_fmt, ws.options.scheme)).items():
        named[name], by_block[name] = plan, formats
    named.update(plan_paths)
    rows = evaluate_plans(ws, named, desc="mixed precision")
    for row in rows:
        row["formats_by_block"] = by_block.get(row["plan"])
    return PlanRows(rows)


def ablation(ws: Workspace, ranking: list[int] | None = None, fmt: str | None = None, block: int | None = None) -> dict:
    """Only the least sensitive block (or ``block``) quantized to ``fmt``, all others FP32."""
    fmt = ws.format(fmt or ws.task.default_ablation_format)
    if ranking is not None:
        ranking = check_ranking(ws, ranking)
    if block is not None:
        ws.units.block_units(block)  # range check before any evaluation
    else:
        block = (ranking if ranking is not None else block_ranking(ws, fmt))[-1]
    row = evaluate_plans(ws, {f"block{block}@{fmt.name}": blocks_plan(ws.units, {block: fmt})}, desc="ablation")[0]
    return {"block": block, "format": fmt.name, **row}


def unit_losses(ws: Workspace, candidates: list[Format], unit: str, objective: str) -> dict[tuple[str, str], float]:
    """Measured loss of every unit alone in every candidate format (from the store when finished)."""
    sens = sensitivity(ws, candidates, unit)
    key = metric_key(ws, objective)
    losses = {}
    for row in sens.rows:
        names = ws.units.block_units(row["block"]) if unit == "block" else [row["unit"]]
        value = max(row[key], 0.0)  # a unit that measured better than FP32 is not worth bits
        for name in names:  # a block's loss is carried by its units so that groups can sum them
            losses[(name, row["format"])] = value / len(names)
    return losses


def allocate(ws: Workspace, budget: Budget, candidates=None, unit: str = "block", tie: str | None = None,
             objective: str = "kl") -> Allocation:
    """The optimal plan under one budget (a :class:`Budget` or average bits per weight), from measured single-unit
    losses (not yet measured itself: see :func:`frontier`)."""
    return allocations(ws, [budget], candidates, unit, tie, objective)[0][1]


def allocations(ws: Workspace, budgets: list[Budget], candidates=None, unit: str = "block", tie: str | None = None,
                objective: str = "kl") -> list[tuple[str, Allocation]]:
    """The optimal plan under each budget (exact MILP over the measured single-unit losses)."""
    budgets = [Budget.of(b) for b in budgets]
    fmts = ws.formats(candidates or ws.task.default_candidates)
    groups = check_allocation(ws, budgets, fmts, unit, tie)
    metric_key(ws, objective)
    losses = unit_losses(ws, fmts, unit, objective)
    return [(f"allocated@{b.label()}", solve_allocation(ws.units, ws.model, groups, losses, fmts, b)) for b in budgets]


def check_allocation(ws: Workspace, budgets: list[Budget], candidates: list[Format], unit: str = "block",
                     tie: str | None = None) -> list[Group]:
    """The allocation groups, after checking from sizes alone (no evaluation) that every budget is feasible."""
    _check_choice(unit, UNIT_KINDS, "unit")
    compile_tie(tie)  # a bad regex is refused even where --unit block leaves it unused
    groups = make_groups(ws.units, unit, tie)
    zero = {(name, f.name): 0.0 for name in ws.units.linear_units() for f in candidates}
    problem = build_problem(ws.units, ws.model, groups, zero, candidates)
    for budget in budgets:
        budget_limit(problem, budget, candidates)
    return groups


def default_budgets(ws: Workspace, candidates=None) -> list[Budget]:
    """The average bits of each uniform candidate below 16 bits, and the midpoints between them."""
    fmts = ws.formats(candidates or ws.task.default_candidates)
    sizes = sorted({round(average_bits(ws.units, uniform_plan(ws.units, f)), 3) for f in fmts if f.nominal_bits < 16})
    mids = [round((a + b) / 2, 3) for a, b in zip(sizes, sizes[1:])]
    return [Budget(avg_bits=v) for v in sorted(set(sizes + mids))]


def frontier(ws: Workspace, budgets: list[Budget] | None = None, candidates=None, unit: str = "block",
             tie: str | None = None, objective: str = "kl") -> FrontierResult:
    """Allocated plans over budgets, uniform baselines and hand strategies, all measured; predicted vs measured."""
    fmts = ws.formats(candidates or ws.task.default_candidates)
    budgets = [Budget.of(b) for b in budgets] if budgets else default_budgets(ws, fmts)
    allocated = allocations(ws, budgets, fmts, unit, tie, objective)
    named: dict[str, Plan] = {name: a.plan for name, a in allocated}
    kinds = dict.fromkeys(named, "allocated")
    for fmt in sorted(fmts, key=lambda f: -f.nominal_bits):
        named[f"uniform {fmt.name}"] = uniform_plan(ws.units, fmt)
        kinds[f"uniform {fmt.name}"] = "uniform"
    rank_fmt = min((f for f in fmts if f.nominal_bits >= 4), key=lambda f: f.nominal_bits, default=fmts[0])
    levels = Levels.for_family(rank_fmt, ws.options.scheme)
    for name, (plan, _) in strategy_plans(ws.units, block_ranking(ws, rank_fmt), levels).items():
        named[name], kinds[name] = plan, "hand"
    rows = evaluate_plans(ws, named, desc="frontier")
    predicted = {name: a.predicted_loss for name, a in allocated}
    key = metric_key(ws, objective)
    for row in rows:
        row["kind"] = kinds[row["plan"]]
        row["predicted_loss"] = predicted.get(row["plan"])
        row["measured_over_predicted"] = row[key] / row["predicted_loss"] if row["predicted_loss"] else None
    return FrontierResult(objective, unit, [f.name for f in fmts], rows,
                          {name: a.plan.to_json_dict() for name, a in allocated},
                          {name: dict(a.choices) for name, a in allocated})


def export(ws: Workspace, plan: Plan | str | Path, out: str | Path, target: str = "torchao", verify: bool = True) -> dict:
    """Write ``plan`` (a :class:`Plan` or a plan file) as a real quantized model (torchao checkpoint, or a GGUF
    file) and check it in a fresh process."""
    from quantsense.quantization.export import export_bytes, export_plan, weights_file_bytes

    from quantsense.io import check_output

    _check_choice(target, ("torchao", "gguf"), "export format")
    check_output(out, single_file=target == "gguf", empty_folder=True)
    plan = as_plan(ws, plan)
    if target == "gguf":
        from quantsense.quantization.gguf_plan import export_gguf

        return export_gguf(ws, plan, Path(out), verify=verify)
    path = export_plan(ws.source, ws.task.model_kind, ws.units, plan, out, ws.model, ws.tokenizer)
    fp32_bytes = model_bytes(ws.model, ws.units, Plan())
    report = {
        "out": str(path), "format": "torchao",
        "plan_avg_bits": average_bits(ws.units, plan),
        "disk_bytes": weights_file_bytes(path),
        "predicted_export_bytes": export_bytes(ws.model, ws.units, plan),
        "predicted_packed_bytes": model_bytes(ws.model, ws.units, plan),
        "fp32_param_bytes": fp32_bytes,
    }
    source = Path(ws.source)
    report["fp32_disk_bytes"] = weights_file_bytes(source) if source.is_dir() else fp32_bytes
    if source.suffix == ".gguf":
        report["note"] = "GGUF source: FP32 size is the de-quantized fp32 parameters, not the GGUF file"
    report["disk_factor"] = report["fp32_disk_bytes"] / report["disk_bytes"]
    report["predicted_factor"] = fp32_bytes / report["predicted_export_bytes"]
    report["packed_factor"] = fp32_bytes / report["predicted_packed_bytes"]
    if verify:
        simulated = ws.engine.evaluate_many([("export plan", plan)], desc="simulated plan")["export plan"]
        report.update(ws.task.verify_torchao_export(path, ws.source, ws.data, simulated, ws.batches))
    return report


def run_study(ws: Workspace, formats=None, unit: str = "block", views=("only",), include_extra: bool = False,
              rank_by: str = "kl", blocks: list[int] | None = None, plan_files=(), calibration_data: str | None = None,
              calibration_size: int = 128, argv: list[str] | None = None) -> StudyResult:
    """The reference study end to end: baseline, sensitivity, (proxies), mixed strategies, ablation."""
    sweep_inputs(ws, formats, unit, views, include_extra, rank_by, blocks)  # every input checked before the first evaluation
    for path in plan_files:
        load_plan(ws, path)
    if calibration_data:
        calibration(ws, calibration_data, calibration_size)
    result = StudyResult(provenance(argv), ws.describe(), baseline(ws))
    result.sensitivity = sensitivity(ws, formats, unit, views, include_extra, rank_by, blocks)
    if calibration_data:
        result.proxies = proxies(ws, calibration_data, calibration_size, result.sensitivity.formats, unit)
    rank_fmt = result.sensitivity.lowest_format()
    complete = unit == "block" and blocks is None
    ranking = result.sensitivity.block_ranking(rank_fmt) if complete else block_ranking(ws, rank_fmt)
    result.mixed = mixed(ws, ranking, plan_files, rank_fmt)
    result.ablation = ablation(ws, ranking, Levels.for_family(ws.format(rank_fmt), ws.options.scheme).low)
    return result
