"""The study as library calls: each phase is a function of a :class:`~quantsense.workspace.Workspace`
returning a typed result; :func:`run_study`, :func:`run_frontier` and :func:`run_export` run whole commands
(the CLI is a thin layer over them; every input is checked first, by :mod:`quantsense.inputs`).

    import quantsense as qs
    ws = qs.open_workspace("models/minilm-sst2", data="validation.tsv")
    sens = qs.sensitivity(ws, ["int8", "int4"])
    print(sens.block_ranking())
    front = qs.frontier(ws, budgets=[4.5], candidates=["int4", "int8"])  # quantsense.search
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path

from quantsense.errors import QuantsenseError
from quantsense.inputs import (  # noqa: F401  (as_plan, load_plan, calibration... are part of the API here too)
    as_plan,
    calibration,
    check_choice,
    check_ranking,
    load_plan,
    metric_key,
    sweep_inputs,
)
from quantsense.mixed_precision.strategies import Levels, blocks_plan, misfit, strategy_levels, strategy_plans
from quantsense.quantization.formats import Format
from quantsense.quantization.plan import Plan
from quantsense.quantization.size import average_bits, model_bytes
from quantsense.mixed_precision.reduced import sequential_sweep
from quantsense.results import PlanRows, SensitivityResult, StudyResult, provenance
from quantsense.sweeps.ranking import rank_rows
from quantsense.sweeps.record import ExhaustiveRecord
from quantsense.sweeps.sweep import build_entries, run_sweep, skipped_pairs
from quantsense.workspace import Workspace

PHASES = ("baseline", "sensitivity", "proxies", "mixed", "ablation")
REFERENCE_NAMES = {"float32": "FP32", "bfloat16": "BF16", "float16": "FP16"}  # the unquantized model, by its dtype


def baseline(ws: Workspace) -> dict:
    """Phase 1: the unquantized model's figures (accuracy, or perplexity), with ``summary``, the task's sentence."""
    base = {**ws.task.baseline(ws.reference(), ws.data), "reference": REFERENCE_NAMES.get(ws.dtype, ws.dtype)}
    return {**base, "summary": ws.task.baseline_text(base)}


def sensitivity(
    ws: Workspace,
    formats=None,
    unit: str = "block",
    views=("only",),
    include_extra: bool = False,
    rank_by: str = "kl",
    blocks: list[int] | None = None,
    reduced: bool = False,
) -> SensitivityResult:
    """Phase 2: every unit x format x view measured against FP32, and a ranking per (view, format).
    ``reduced`` (the command line's default): the ``only`` view is measured sequentially
    (:mod:`quantsense.sweeps.sequential`), each unit on as many data segments as its tier needs."""
    started = time.perf_counter()
    fmts, views, key, entries = sweep_inputs(ws, formats, unit, views, include_extra, rank_by, blocks)
    sequential = [e for e in entries if e.view == "only"] if reduced else []
    rows = run_sweep(
        ws.engine,
        ws.applier,
        ws.units,
        [e for e in entries if e not in sequential],
        ws.compare,
        ws.task.loss.key,
        desc=f"{unit} sweep",
    )
    full = (len(entries) + 1) * ws.batches.num_tokens  # every row and the FP32 reference on all the data
    record = ExhaustiveRecord(evaluations=len(entries), token_evaluations=full, full_token_evaluations=full)
    if sequential:
        seq_rows, record = sequential_sweep(ws, sequential, key, len(entries))
        rows = seq_rows + rows
    record.seconds = time.perf_counter() - started
    record.skipped = skipped_pairs(ws.units, fmts, unit, include_extra, blocks)
    rankings = {
        f"{view}@{f.name}": rank_rows([r for r in rows if r["format"] == f.name and r["view"] == view], key, view)
        for f in fmts
        for view in views
    }
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
    return {
        "calibration": {"source": calib.source, "examples": len(calib), "disjoint_from_evaluation": True},
        "unit": unit,
        "rows": rows,
        "correlations": proxy_correlations(rows, measured.rows, ws.task.loss.key),
    }


def evaluate_plans(ws: Workspace, named: dict[str, Plan], desc: str = "plans", kind: str = "mixed") -> list[dict]:
    """Measure named plans: a row per plan with the task's paired metrics, the plan's size, and its identity as
    data (``kind``; ``format``: a uniform plan's one format; ``budget``: an allocated plan's; set by the caller)."""
    ws.check_intervals()
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
        rows.append(
            {
                "plan": name,
                **ws.compare(reference, results[name]),
                "avg_bits": average_bits(ws.units, plan),
                "model_mb": size / 1e6,
                "compression": fp32_bytes / size,
                "formats": plan.format_counts(),
                "kind": kind,
                "format": None,
                "budget": None,
                "fp32_units": sum(n not in planned for n in linear),
            }
        )
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
    plan_paths = {
        f"file:{Path(path).name}": load_plan(ws, path) for path in plan_files
    }  # checked before any evaluation
    _check_strategy_formats(ws, [rank_fmt], need_levels=not plan_paths)
    ws.check_intervals()
    levels, why = strategy_levels(rank_fmt, ws.options.scheme, ws.format, ws.units)
    ranking = ranking if ranking is not None or levels is None else block_ranking(ws, rank_fmt)
    named, by_block = {}, {}
    for name, (plan, formats) in strategy_plans(ws.units, ranking, levels).items() if levels else ():
        named[name], by_block[name] = plan, formats
    named.update(plan_paths)
    named = {name: ws.finish(plan) for name, plan in named.items()}  # saved as measured, with --embedding's format
    rows = evaluate_plans(ws, named, desc="mixed precision")
    for row in rows:
        row["formats_by_block"] = by_block.get(row["plan"])
    skipped = {"hand strategies": why} if why else {}
    return PlanRows(rows, {name: plan.to_json_dict() for name, plan in named.items()}, skipped)


def ablation(ws: Workspace, ranking: list[int] | None = None, fmt: str | None = None, block: int | None = None) -> dict:
    """Only the least sensitive block (or ``block``) quantized to ``fmt``, all others FP32."""
    fmt = ws.format(fmt or ws.task.default_ablation_format)
    if ranking is not None:
        ranking = check_ranking(ws, ranking)
    if block is not None:
        ws.units.block_units(block)  # range check before any evaluation
    ws.check_intervals()
    if block is None:
        block = (ranking if ranking is not None else block_ranking(ws, fmt))[-1]
    row = evaluate_plans(
        ws, {f"block{block}@{fmt.name}": blocks_plan(ws.units, {block: fmt})}, desc="ablation", kind="ablation"
    )[0]
    outside = {name: f.name for name, f in ws.embedding_plan().assignments}  # --embedding's table, quantized too
    return {
        "block": block,
        "format": fmt.name,
        **{k: v for k, v in row.items() if k != "format"},
        "outside": outside,
        "summary": ws.task.effect_text(row),
    }


def low_level(ws: Workspace, fmt: Format) -> Format:
    """The low level of ``fmt``'s family (int4, q4_0): the reference ablation's format; ``fmt`` where none is defined."""
    levels = Levels.for_family(fmt, ws.options.scheme)
    return levels.low if levels is not None else fmt


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
    if ws.units.stream is not None and not writer.streams:
        raise QuantsenseError(
            f"a {target} export builds the whole quantized model in memory, and this model's blocks are streamed from "
            "its files (--stream-blocks): pass --stream-blocks off on a machine with the memory, or export to gguf"
        )
    if out is not None:
        check_output(out, single_file=writer.single_file, empty_folder=True)
    plan = as_plan(ws, plan)
    writer.check_plan(export_source(ws), plan)
    return plan


def prepare_export(
    ws: Workspace, plan: Plan | str | Path, out: str | Path, target: str = "torchao", verify: bool = True
):
    """Every check of an export (the target, --out, the plan, the target's rules, the task's check), before any work;
    returns the call that writes it (and, unless ``verify=False``, checks it, simulating the plan when the check runs)."""
    from quantsense.exporters import export_target

    plan = check_export(ws, plan, out, target)
    exporter, check = export_target(target), None
    if verify:
        check = exporter.own_check(export_source(ws), plan)
    if verify and check is None:
        ws.check_intervals()

        def simulate():
            return ws.engine.evaluate_many([("export plan", plan)], desc="simulated plan")["export plan"]

        check = ws.task.export_check(
            target, ws.source, ws.data, simulate, ws.batches
        )  # refuses a target it cannot check
    return lambda: exporter.write(export_source(ws), plan, out, check=check)


def export(
    ws: Workspace, plan: Plan | str | Path, out: str | Path, target: str = "torchao", verify: bool = True
) -> dict:
    """Write ``plan`` (a :class:`Plan` or a plan file) with export target ``target`` (a torchao checkpoint, or a
    GGUF file) and, unless ``verify=False``, check it in a fresh process with the task's own check."""
    return prepare_export(ws, plan, out, target, verify)()


def llama_quantize_command(ws: Workspace, plan: Plan | str | Path) -> str:
    """The llama-quantize command line that reproduces ``plan`` (GGUF formats only)."""
    from quantsense.exporters import export_target

    return export_target("gguf").llama_quantize_command(export_source(ws), check_export(ws, plan, None, "gguf"))


@dataclass(frozen=True)
class StudyRequest:
    """What a study measures, in one object (:func:`run_study`): the sweep (``formats``, ``unit``, ``views``,
    ``include_extra`` units outside the blocks, ``rank_by``, ``blocks``, ``reduced`` for a sequential sweep), the plans
    measured beside the strategies (``plan_files``), the proxies' labelled ``calibration_data`` and its size, the
    ``phases`` to run, and the ranking's and ablation's formats and block (defaults: the sweep's fewest bits, its family's
    low level, the least sensitive block)."""

    formats: tuple | None = None
    unit: str = "block"
    views: tuple = ("only",)
    include_extra: bool = False
    rank_by: str = "kl"
    blocks: tuple | None = None
    plan_files: tuple = ()
    calibration_data: str | None = None
    calibration_size: int = 128
    phases: tuple = PHASES
    rank_format: object = None
    ablation_format: object = None
    ablation_block: int | None = None
    reduced: bool = False


def run_study(
    ws: Workspace, request: StudyRequest | None = None, *, argv: list[str] | None = None, on_phase=None, **fields
) -> StudyResult:
    """The reference study end to end: baseline, sensitivity, proxies (with ``calibration_data``), the mixed
    strategies and the ablation, as ``request`` (a :class:`StudyRequest`; keyword ``fields`` override or stand for it,
    e.g. ``run_study(ws, formats=["int8", "int4"])``) asks. Every input is checked before the first evaluation;
    ``on_phase(name, result)`` is called as each phase finishes (the CLI prints there)."""
    unknown = sorted(set(fields) - {f.name for f in dataclass_fields(StudyRequest)})
    if unknown:
        raise QuantsenseError(f"run_study() got unknown setting(s) {', '.join(unknown)}; see quantsense.StudyRequest")
    r = replace(request or StudyRequest(), **fields)
    formats, unit, views, include_extra, rank_by, blocks = (
        r.formats,
        r.unit,
        r.views,
        r.include_extra,
        r.rank_by,
        r.blocks,
    )
    plan_files, calibration_data, calibration_size, phases = (
        r.plan_files,
        r.calibration_data,
        r.calibration_size,
        r.phases,
    )
    rank_format, ablation_format, ablation_block, reduced = (
        r.rank_format,
        r.ablation_format,
        r.ablation_block,
        r.reduced,
    )
    for phase in phases:
        check_choice(phase, PHASES, "phase")
    wanted = set(phases) | ({"sensitivity"} if "proxies" in phases else set())
    fmts = (
        sweep_inputs(ws, formats, unit, views, include_extra, rank_by, blocks)[0] if "sensitivity" in wanted else None
    )
    rank_fmt = ws.format(rank_format) if rank_format else None
    abl_fmt = ws.format(ablation_format) if ablation_format else None
    if ablation_block is not None:
        ws.units.block_units(ablation_block)
    for path in plan_files:
        load_plan(ws, path)
    if {"mixed", "ablation"} & wanted:  # the ranking format (the sweep's with the fewest bits) and its strategies
        rank_fmt = rank_fmt or (
            min(fmts, key=lambda f: f.nominal_bits) if fmts else ws.format(ws.task.default_ablation_format)
        )
        _check_strategy_formats(ws, [rank_fmt], "mixed" in wanted and not plan_files)
    if calibration_data and "proxies" in wanted:
        calibration(ws, calibration_data, calibration_size)
    if wanted - {"baseline"}:
        ws.check_intervals()
    result, notify = _begin(ws, argv, on_phase)
    notify("baseline", result)
    if "sensitivity" in wanted:
        result.sensitivity = sensitivity(ws, fmts, unit, views, include_extra, rank_by, blocks, reduced)
        notify("sensitivity", result)
    if "proxies" in wanted and calibration_data:
        result.proxies = proxies(ws, calibration_data, calibration_size, result.sensitivity.formats, unit)
        notify("proxies", result)
    if {"mixed", "ablation"} & wanted:
        swept = (
            result.sensitivity is not None
            and unit == "block"
            and blocks is None
            and "only" in views
            and rank_by == "kl"
            and rank_fmt.name in result.sensitivity.formats
        )  # else the default ranking sweep
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
    """Each candidate ranking format can rank every block, and its strategy levels fit the model (checked like any
    named format); strategies that cannot be built are refused when they are all there is to evaluate."""
    for fmt in candidates:
        why = misfit(ws.units, fmt)
        if why:
            raise QuantsenseError(
                f"the block ranking at {fmt.name} needs every block linear in {fmt.name}: {why}; "
                "rank with another format (--rank-format)"
            )
        levels, why = strategy_levels(fmt, ws.options.scheme, ws.format, ws.units)
        if levels is None and need_levels:
            raise QuantsenseError(
                f"no reference strategy can be built at {fmt.name}: {why}; rank with another format "
                "(--rank-format) or pass --plan files"
            )


def run_export(
    ws: Workspace,
    plan,
    out: str | Path,
    target: str = "torchao",
    verify: bool = True,
    argv: list[str] | None = None,
    on_phase=None,
) -> StudyResult:
    """Baseline and the export report, everything about the export checked first."""
    write = prepare_export(ws, plan, out, target, verify)
    result, notify = _begin(ws, argv, on_phase)
    result.export = write()
    notify("export", result)
    result.formats = ws.format_table()
    return result
