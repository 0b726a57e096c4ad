"""The study as library calls: each phase is a function of a :class:`~quantsense.workspace.Workspace`
returning a typed result; :func:`run_study`, :func:`run_frontier` and :func:`run_export` run whole commands
(the CLI is a thin layer over them; every input is checked first, by :mod:`quantsense.inputs`).

    import quantsense as qs
    ws = qs.open_workspace("models/minilm-sst2", data="validation.tsv")
    sens = qs.sensitivity(ws, ["int8", "int4"])
    print(sens.block_ranking())
    front = qs.frontier(ws, budgets=[4.5], candidates=["int4", "int8"])
"""

from __future__ import annotations

import time
from pathlib import Path

from quantsense.errors import QuantsenseError
from quantsense.inputs import (  # noqa: F401  (as_plan, load_plan, calibration... are part of the API here too)
    as_plan,
    calibration,
    check_allocation,
    check_choice,
    check_ranking,
    load_plan,
    metric_key,
    sweep_inputs,
)
from quantsense.mixed_precision.allocation import Allocation, Budget, allocate as solve_allocation
from quantsense.mixed_precision.strategies import Levels, blocks_plan, strategy_plans, uniform_plan
from quantsense.quantization.formats import Format
from quantsense.quantization.plan import Plan
from quantsense.quantization.size import average_bits, model_bytes
from quantsense.ggml_plans import with_outside, with_presets
from quantsense.reduced import estimated_pairs, reduced_sweep, screened_block_ranking, sequential_sweep
from quantsense.results import FrontierResult, PlanRows, SensitivityResult, StudyResult, provenance
from quantsense.sweeps.ranking import rank_rows
from quantsense.sweeps.sweep import build_entries, fits, run_sweep, skipped_pairs, sweep_units
from quantsense.workspace import Workspace

PHASES = ("baseline", "sensitivity", "proxies", "mixed", "ablation")


def baseline(ws: Workspace) -> dict:
    """Phase 1: the unquantized model's figures (accuracy, or perplexity), with ``summary``, the task's sentence."""
    base = ws.task.baseline(ws.reference(), ws.data)
    return {**base, "summary": ws.task.baseline_text(base)}


def sensitivity(ws: Workspace, formats=None, unit: str = "block", views=("only",), include_extra: bool = False,
                rank_by: str = "kl", blocks: list[int] | None = None, reduced: bool = False) -> SensitivityResult:
    """Phase 2: every unit x format x view measured against FP32, and a ranking per (view, format).
    ``reduced`` (the command line's default): the ``only`` view is measured sequentially
    (:mod:`quantsense.sweeps.sequential`), each unit on as many data segments as its tier needs."""
    started = time.perf_counter()
    fmts, views, key, entries = sweep_inputs(ws, formats, unit, views, include_extra, rank_by, blocks)
    sequential = [e for e in entries if e.view == "only"] if reduced else []
    rows = run_sweep(ws.engine, ws.applier, ws.units, [e for e in entries if e not in sequential], ws.compare,
                     ws.task.loss.key, desc=f"{unit} sweep")
    full = (len(entries) + 1) * ws.batches.num_tokens  # every row and the FP32 reference on all the data
    record = {"mode": "exhaustive", "evaluations": len(entries), "token_evaluations": full, "full_token_evaluations": full}
    if sequential:
        seq_rows, record = sequential_sweep(ws, sequential, key, len(entries))
        rows = seq_rows + rows
    record["seconds"] = time.perf_counter() - started
    record["skipped"] = skipped_pairs(ws.units, fmts, unit, include_extra, blocks)
    rankings = {f"{view}@{f.name}": rank_rows([r for r in rows if r["format"] == f.name and r["view"] == view], key, view)
                for f in fmts for view in views}
    return SensitivityResult(unit, [f.name for f in fmts], list(views), key, rows, rankings, record)


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


def evaluate_plans(ws: Workspace, named: dict[str, Plan], desc: str = "plans", kind: str = "mixed") -> list[dict]:
    """Measure named plans: a row per plan with the task's paired metrics, the plan's size, and its identity as
    data (``kind``; ``format``: a uniform plan's one format; ``budget``: an allocated plan's; set by the caller)."""
    named = {name: ws.finish(plan) for name, plan in named.items()}  # --embedding's format on the token embedding
    for plan in named.values():
        ws.applier.check(plan)  # every plan's names and shapes before the first evaluation
        ws.record_formats(f for _, f in plan.assignments)
    reference = ws.reference()
    results = ws.engine.evaluate_many(list(named.items()), desc=desc)
    fp32_bytes = model_bytes(ws.model, ws.units, Plan())
    linear = ws.units.linear_units()
    rows = []
    for name, plan in named.items():
        size = model_bytes(ws.model, ws.units, plan)
        planned = set(plan.units())
        rows.append({"plan": name, **ws.compare(reference, results[name]), "avg_bits": average_bits(ws.units, plan),
                     "model_mb": size / 1e6, "compression": fp32_bytes / size, "formats": plan.format_counts(),
                     "kind": kind, "format": None, "budget": None, "fp32_units": sum(n not in planned for n in linear)})
    return rows


def block_ranking(ws: Workspace, fmt: str | Format | None = None) -> list[int]:
    """Blocks, most sensitive first, by a per-block sweep at ``fmt`` (default: the task's lowest default format)."""
    fmt = ws.format(fmt or ws.task.default_ablation_format)
    return sensitivity(ws, [fmt]).block_ranking(fmt.name)


def mixed(ws: Workspace, ranking: list[int] | None = None, plan_files=(), rank_format: str | None = None) -> PlanRows:
    """Phase 3: the reference's three strategies, derived from ``ranking`` (default: measured), plus plan files."""
    rank_fmt = ws.format(rank_format or ws.task.default_ablation_format)
    if ranking is not None:
        ranking = check_ranking(ws, ranking)
    plan_paths = {f"file:{Path(path).name}": load_plan(ws, path) for path in plan_files}  # checked before any evaluation
    ranking = ranking if ranking is not None else block_ranking(ws, rank_fmt)
    named, by_block = {}, {}
    _check_strategy_formats(ws, [rank_fmt], need_levels=not plan_paths)
    levels = Levels.for_family(rank_fmt, ws.options.scheme)
    for name, (plan, formats) in (strategy_plans(ws.units, ranking, levels).items() if levels else ()):
        named[name], by_block[name] = plan, formats
    named.update(plan_paths)
    named = {name: ws.finish(plan) for name, plan in named.items()}  # saved as measured, with --embedding's format
    rows = evaluate_plans(ws, named, desc="mixed precision")
    for row in rows:
        row["formats_by_block"] = by_block.get(row["plan"])
    return PlanRows(rows, {name: plan.to_json_dict() for name, plan in named.items()})


def ablation(ws: Workspace, ranking: list[int] | None = None, fmt: str | None = None, block: int | None = None) -> dict:
    """Only the least sensitive block (or ``block``) quantized to ``fmt``, all others FP32."""
    fmt = ws.format(fmt or ws.task.default_ablation_format)
    if ranking is not None:
        ranking = check_ranking(ws, ranking)
    if block is not None:
        ws.units.block_units(block)  # range check before any evaluation
    else:
        block = (ranking if ranking is not None else block_ranking(ws, fmt))[-1]
    row = evaluate_plans(ws, {f"block{block}@{fmt.name}": blocks_plan(ws.units, {block: fmt})}, desc="ablation",
                         kind="ablation")[0]
    outside = {name: f.name for name, f in ws.embedding_plan().assignments}  # --embedding's table, quantized too
    return {"block": block, "format": fmt.name, **{k: v for k, v in row.items() if k != "format"},
            "outside": outside, "summary": ws.task.effect_text(row)}


def low_level(ws: Workspace, fmt: Format) -> Format:
    """The low level of ``fmt``'s family (int4, q4_0): the reference ablation's format; ``fmt`` where none is defined."""
    levels = Levels.for_family(fmt, ws.options.scheme)
    return levels.low if levels is not None else fmt


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
             objective: str = "kl", reduced: bool = False) -> Allocation:
    """The optimal plan under one budget (a :class:`Budget` or average bits per weight), from single-unit losses
    (the plan itself is not measured here: see :func:`frontier`)."""
    return allocations(ws, [budget], candidates, unit, tie, objective, reduced)[0][1]


def allocations(ws: Workspace, budgets: list[Budget], candidates=None, unit: str = "block", tie: str | None = None,
                objective: str = "kl", reduced: bool = False) -> list[tuple[str, Allocation]]:
    """The optimal plan under each budget (exact MILP over single-unit losses); see :func:`sweep_and_allocate`."""
    return sweep_and_allocate(ws, budgets, candidates, unit, tie, objective, reduced)[0]


def sweep_and_allocate(ws: Workspace, budgets: list[Budget], candidates=None, unit: str = "block", tie: str | None = None,
                       objective: str = "kl", reduced: bool = False) -> tuple[list[tuple[str, Allocation]], dict]:
    """The optimal plan under each budget (exact MILP over single-unit losses) and what the sweep did.

    By default every (unit, format) is measured on all the data. ``reduced``: a reduced sweep
    (:mod:`quantsense.reduced`, the command line's default): each unit measured once on a data segment, the rest
    estimated, and measured where a plan hinges on it."""
    budgets = [Budget.of(b) for b in budgets]
    fmts = ws.formats(candidates or ws.task.default_candidates)
    groups = check_allocation(ws, budgets, fmts, unit, tie)
    key = metric_key(ws, objective)
    if not reduced:
        started, tokens = time.perf_counter(), ws.batches.num_tokens
        losses = unit_losses(ws, fmts, unit, objective)
        pairs = len(sweep_units(ws.units, unit)) * len(fmts)
        full = (pairs + 1) * tokens  # every pair and the FP32 reference on all the data
        record = {"mode": "exhaustive", "pairs": pairs, "measured": pairs, "estimated": 0, "token_evaluations": full,
                  "full_token_evaluations": full, "seconds": time.perf_counter() - started}
    else:
        sweep = reduced_sweep(ws, fmts, unit, groups, budgets, key, seed=ws.options.seed)
        losses, record = sweep.losses, sweep.record
    outside = ws.embedding_plan()  # a size budget counts the embedding as it will be stored
    plans = [(f"allocated@{b.label()}", solve_allocation(ws.units, ws.model, groups, losses, fmts, b, outside=outside))
             for b in budgets]
    return plans, record


def default_budgets(ws: Workspace, candidates=None) -> list[Budget]:
    """The average bits of each uniform candidate below 16 bits, and the midpoints between them."""
    fmts = ws.formats(candidates or ws.task.default_candidates)
    sizes = sorted({round(average_bits(ws.units, uniform_plan(ws.units, f)), 3) for f in fmts if f.nominal_bits < 16})
    mids = [round((a + b) / 2, 3) for a, b in zip(sizes, sizes[1:])]
    return [Budget(avg_bits=v) for v in sorted(set(sizes + mids))]


def frontier(ws: Workspace, budgets: list[Budget] | None = None, candidates=None, unit: str = "block",
             tie: str | None = None, objective: str = "kl", reduced: bool = False, presets=()) -> FrontierResult:
    """Allocated plans over budgets, uniform baselines and hand strategies, all measured; predicted vs measured.
    ``reduced``: the single-unit losses come from a reduced sweep (see :func:`sweep_and_allocate`) and the hand strategies'
    block ranking from the first data segment. ``presets``: llama.cpp presets measured too, each with an allocation
    at its size (:mod:`quantsense.ggml_plans`)."""
    fmts = ws.formats(candidates or ws.task.default_candidates)
    budgets = [Budget.of(b) for b in budgets] if budgets else [] if presets else default_budgets(ws, fmts)
    budgets, preset_plans, outside = with_presets(ws, budgets, presets)
    allocated, sweep = sweep_and_allocate(ws, budgets, fmts, unit, tie, objective, reduced)
    named: dict[str, Plan] = {name: with_outside(a.plan, b, outside) for (name, a), b in zip(allocated, budgets)}
    identity = {name: {"kind": "allocated", "budget": b.to_dict()} for (name, _), b in zip(allocated, budgets)}
    named.update(preset_plans)
    identity.update({name: {"kind": "preset"} for name in preset_plans})
    for fmt in sorted(fmts, key=lambda f: -f.nominal_bits):
        if not all(fits(ws.units, (n,), fmt) for n in ws.units.linear_units()):
            continue  # e.g. q4_K on a model with 576-wide rows: no uniform plan exists (a preset is llama.cpp's answer)
        named[f"uniform {fmt.name}"] = uniform_plan(ws.units, fmt)
        identity[f"uniform {fmt.name}"] = {"kind": "uniform", "format": fmt.name}
    rank_fmt = min((f for f in fmts if f.nominal_bits >= 4), key=lambda f: f.nominal_bits, default=fmts[0])
    levels = Levels.for_family(rank_fmt, ws.options.scheme)
    ranking = (lambda: screened_block_ranking(ws, rank_fmt)) if reduced else (lambda: block_ranking(ws, rank_fmt))
    for name, (plan, _) in (strategy_plans(ws.units, ranking(), levels).items() if levels else ()):
        named[name], identity[name] = plan, {"kind": "hand"}
    named = {name: ws.finish(plan) for name, plan in named.items()}  # saved as measured, with --embedding's format
    rows = evaluate_plans(ws, named, desc="frontier")
    key = metric_key(ws, objective)
    sweep = {**sweep, **ws.embedding_loss(key)}  # --embedding's table alone, measured: in every allocation's prediction
    predicted = {name: a.predicted_loss + sweep.get("embedding", {}).get("loss", 0.0) for name, a in allocated}
    estimated = {name: estimated_pairs(ws, a.plan, unit, sweep) for name, a in allocated} if reduced else {}
    for row in rows:
        row.update(identity[row["plan"]])
        row["predicted_loss"] = predicted.get(row["plan"])
        row["estimated_pairs"] = estimated.get(row["plan"])
        row["measured_over_predicted"] = row[key] / row["predicted_loss"] if row["predicted_loss"] else None
    groups = {name: info for _, a in allocated for name, info in a.groups.items()}
    return FrontierResult(objective, unit, [f.name for f in fmts], rows,
                          {name: named[name].to_json_dict() for name, _ in allocated},
                          {name: dict(a.choices) for name, a in allocated}, groups, sweep)


def export_source(ws: Workspace):
    """The measured model as an export target takes it (explicit inputs, not the workspace)."""
    from quantsense.exporters.base import ExportSource

    return ExportSource(ws.source, ws.model, ws.tokenizer, ws.units, ws.dtype, ws.task.model_head)


def check_export(ws: Workspace, plan, out: str | Path | None, target: str = "torchao") -> Plan:
    """Everything about an export checked before any work: the target, --out, the plan and the target's own rules."""
    from quantsense.exporters import EMBEDDING_REFUSAL, export_target
    from quantsense.io import check_output

    writer = export_target(target)
    if ws.options.embedding:
        raise QuantsenseError(EMBEDDING_REFUSAL)
    if out is not None:
        check_output(out, single_file=writer.SINGLE_FILE, empty_folder=True)
    plan = as_plan(ws, plan)
    writer.check_plan(export_source(ws), plan)
    return plan


def prepare_export(ws: Workspace, plan: Plan | str | Path, out: str | Path, target: str = "torchao", verify: bool = True):
    """Every check of an export (the target, --out, the plan, the target's rules, the task's check), before any work;
    returns the call that writes it (and, unless ``verify=False``, checks it, simulating the plan when the check runs)."""
    from quantsense.exporters import export_target

    plan = check_export(ws, plan, out, target)
    check = None
    if verify:
        def simulate():
            return ws.engine.evaluate_many([("export plan", plan)], desc="simulated plan")["export plan"]
        check = ws.task.export_check(target, ws.source, ws.data, simulate, ws.batches)  # refuses a target it cannot check
    return lambda: export_target(target).write(export_source(ws), plan, out, check=check)


def export(ws: Workspace, plan: Plan | str | Path, out: str | Path, target: str = "torchao", verify: bool = True) -> dict:
    """Write ``plan`` (a :class:`Plan` or a plan file) with export target ``target`` (a torchao checkpoint, or a
    GGUF file) and, unless ``verify=False``, check it in a fresh process with the task's own check."""
    return prepare_export(ws, plan, out, target, verify)()


def llama_quantize_command(ws: Workspace, plan: Plan | str | Path) -> str:
    """The llama-quantize command line that reproduces ``plan`` (GGUF formats only)."""
    from quantsense.exporters.gguf_writer import llama_quantize_command as command

    return command(export_source(ws), check_export(ws, plan, None, "gguf"))


def run_study(ws: Workspace, formats=None, unit: str = "block", views=("only",), include_extra: bool = False,
              rank_by: str = "kl", blocks: list[int] | None = None, plan_files=(), calibration_data: str | None = None,
              calibration_size: int = 128, argv: list[str] | None = None, phases=PHASES, rank_format=None,
              ablation_format=None, ablation_block: int | None = None, on_phase=None, reduced: bool = False) -> StudyResult:
    """The reference study end to end: baseline, sensitivity, proxies (with ``calibration_data``), the mixed
    strategies and the ablation; ``phases`` picks some of them. Every input is checked before the first
    evaluation; ``on_phase(name, result)`` is called as each phase finishes (the CLI prints there). ``reduced``: the
    sweep is sequential (see :func:`sensitivity`)."""
    for phase in phases:
        check_choice(phase, PHASES, "phase")
    wanted = set(phases) | ({"sensitivity"} if "proxies" in phases else set())
    fmts = sweep_inputs(ws, formats, unit, views, include_extra, rank_by, blocks)[0] if "sensitivity" in wanted else None
    rank_fmt = ws.format(rank_format) if rank_format else None
    abl_fmt = ws.format(ablation_format) if ablation_format else None
    if ablation_block is not None:
        ws.units.block_units(ablation_block)
    for path in plan_files:
        load_plan(ws, path)
    if {"mixed", "ablation"} & wanted:  # the strategies' formats, for every format the ranking may use
        candidates = [rank_fmt] if rank_fmt else fmts or [ws.format(ws.task.default_ablation_format)]
        _check_strategy_formats(ws, candidates, "mixed" in wanted and not plan_files)
    if calibration_data and "proxies" in wanted:
        calibration(ws, calibration_data, calibration_size)
    result, notify = _begin(ws, argv, on_phase)
    notify("baseline", result)
    if "sensitivity" in wanted:
        result.sensitivity = sensitivity(ws, fmts, unit, views, include_extra, rank_by, blocks, reduced)
        notify("sensitivity", result)
    if "proxies" in wanted and calibration_data:
        result.proxies = proxies(ws, calibration_data, calibration_size, result.sensitivity.formats, unit)
        notify("proxies", result)
    if {"mixed", "ablation"} & wanted:
        rank_fmt = rank_fmt or ws.format(result.sensitivity.lowest_format() if result.sensitivity
                                         else ws.task.default_ablation_format)
        swept = (result.sensitivity is not None and unit == "block" and blocks is None and "only" in views
                 and rank_by == "kl" and rank_fmt.name in result.sensitivity.formats)  # else the default ranking sweep
        ranking = result.sensitivity.block_ranking(rank_fmt.name) if swept else block_ranking(ws, rank_fmt)
        result.ranking = {"format": rank_fmt.name, "blocks": ranking}
        notify("ranking", result)
        if "mixed" in wanted:
            result.mixed = mixed(ws, ranking, plan_files, rank_fmt.name)
            notify("mixed", result)
        if "ablation" in wanted:
            result.ablation = ablation(ws, ranking, abl_fmt or low_level(ws, rank_fmt), ablation_block)
            notify("ablation", result)
    result.formats = ws.format_table()
    return result


def _begin(ws: Workspace, argv, on_phase):
    """A whole command's result, started with the FP32 baseline, and its phase callback (a no-op if none)."""
    return StudyResult(provenance(argv), ws.describe(), baseline(ws)), on_phase or (lambda name, result: None)


def _check_strategy_formats(ws: Workspace, candidates, need_levels: bool) -> None:
    """Each candidate ranking format's strategy levels fit the model (checked like any named format); a family
    without levels is refused when the strategies are all there is to evaluate."""
    for fmt in candidates:
        levels = Levels.for_family(fmt, ws.options.scheme)
        if levels is None and need_levels:
            raise QuantsenseError(f"format {fmt.name} has no reference strategy levels (its family defines none): "
                                  "rank with another format (--rank-format) or pass --plan files")
        for level in (levels.high, levels.mid, levels.low) if levels else ():
            ws.format(level)


def run_frontier(ws: Workspace, budgets: list[Budget] | None = None, candidates=None, unit: str = "block",
                 tie: str | None = None, objective: str = "kl", argv: list[str] | None = None, on_phase=None,
                 reduced: bool = False, presets=()) -> StudyResult:
    """Baseline and frontier (``quantsense allocate`` is one budget), every budget checked from sizes first."""
    budgets = [Budget.of(b) for b in budgets] if budgets else None
    fmts = ws.formats(candidates or ws.task.default_candidates)
    check_allocation(ws, budgets or [], fmts, unit, tie)
    metric_key(ws, objective)
    result, notify = _begin(ws, argv, on_phase)
    notify("baseline", result)
    result.frontier = frontier(ws, budgets, fmts, unit, tie, objective, reduced, presets)
    notify("frontier", result)
    result.formats = ws.format_table()
    return result


def run_export(ws: Workspace, plan, out: str | Path, target: str = "torchao", verify: bool = True,
               argv: list[str] | None = None, on_phase=None) -> StudyResult:
    """Baseline and the export report, everything about the export checked first."""
    write = prepare_export(ws, plan, out, target, verify)
    result, notify = _begin(ws, argv, on_phase)
    result.export = write()
    notify("export", result)
    result.formats = ws.format_table()
    return result
