"""Reduced sweeps on a workspace. :func:`reduced_sweep`: :func:`quantsense.mixed_precision.refine.refine` wired to the
workspace's data segments, weight errors and allocator (``quantsense frontier`` and ``allocate`` unless
``--exhaustive``). :func:`sequential_sweep`: a sensitivity sweep measured on growing data prefixes
(:mod:`quantsense.sweeps.sequential`; ``quantsense sensitivity`` and ``run`` unless ``--exhaustive``).

What it did is returned as plain data (``sweep`` in results.json): the (unit, format) pairs measured and estimated,
the input tokens evaluated against a full sweep's (both counting the FP32 reference's tokens), the loss model's exponent and its agreement with the measurements
of the pairs it had predicted, the plans checked and the wall time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from quantsense.mixed_precision.allocation import budget_limit, build_problem, loss_matrix, solve
from quantsense.mixed_precision.request import AllocationRequest
from quantsense.mixed_precision.refine import Pair, Refinement, refine
from quantsense.quantization.formats import Format
from quantsense.quantization.plan import Plan
from quantsense.sweeps.ranking import interval_keys
from quantsense.sweeps.record import ReducedRecord, SequentialRecord, SweepRecord
from quantsense.sweeps.sequential import sequential_rows
from quantsense.sweeps.sweep import build_entries, sweep_row, sweep_units, weight_error
from quantsense.workspace import Workspace

if TYPE_CHECKING:
    import torch

Z95 = 1.959964
CALIBRATION_UNITS = 12  # units measured to put Fisher predictions on the measured scale (estimate="fisher")
FISHER_DRAWS = 1  # labels drawn per scored token for the Fisher pass
FISHER_ROUND_SHARE = 15  # per 1000 pairs: measured per refinement round with Fisher estimates (3 % with weight errors)


@dataclass
class ReducedSweep:
    losses: dict[tuple[str, str], float]  # (linear module, format) -> loss, as the allocator takes it
    refinement: Refinement
    record: ReducedRecord  # what was done, for results.json and the printed summary


def reduced_sweep(
    ws: Workspace,
    request: AllocationRequest,
    seed: int = 0,
    estimate: str = "weight-error",
    calibration_units: int = CALIBRATION_UNITS,
    per_round: int | None = None,
) -> ReducedSweep:
    """Single-unit losses for every (unit, candidate) of ``request`` (an :class:`~quantsense.inputs.AllocationRequest`:
    the candidates, the units and their groups, the units outside the blocks chosen too, the budgets and the metric):
    measured where the plans under its budgets hinge, else estimated. ``estimate``: ``"weight-error"`` measures every
    unit once and scales its weight errors by that measurement; ``"fisher"`` predicts every pair's mean KL from one
    forward and backward pass (:mod:`quantsense.sweeps.fisher`) and measures only ``calibration_units`` units (spread
    over the predicted losses) before the refinement's own measurements."""
    fmts, groups, budgets, key = request.formats, list(request.groups), request.budgets, request.key
    started = time.perf_counter()
    units = sweep_units(ws.units, request.unit, request.outside)
    by_name = {u.display: u for u in units}
    pairs = [(u.display, f.name) for f in fmts for u in units if request.candidates.fits(u.names, f)]  # storable
    formats = {f.name: f for f in fmts}
    storable = set(pairs)
    units = [u for u in units if any((u.display, f.name) in storable for f in fmts)]  # the others can only stay FP32
    anchors = {u.display: _anchor([f for f in fmts if (u.display, f.name) in storable]).name for u in units}
    if estimate == "fisher":
        errors = fisher_errors(ws, by_name, pairs, formats)
        anchors = _calibration(anchors, errors, calibration_units)
    else:
        columns = ws.input_power()  # each linear's input power per column: errors weighted as the outputs feel them
        errors = {(u, f): weight_error(ws.applier, by_name[u].names, formats[f], columns) for u, f in pairs}
        if ws.applier.runtime_activations:  # the runtime's rounding of the inputs adds its own output error
            rounding = activation_errors(ws, {u.display: u.names for u in units}, fmts)
            errors = {
                (u, f): e + rounding.get((u, formats[f].activation_rounding()), 0.0) for (u, f), e in errors.items()
            }
    segments = ws.segments()
    low, high = interval_keys(key)

    def plan_of(pair: Pair) -> tuple[str, Plan]:
        u, f = pair
        return f"only:{u.replace(' ', '')}@{f}", Plan.of({n: formats[f] for n in by_name[u].names})

    def measure(todo: list[tuple[Pair, int]]) -> dict[Pair, tuple[float, float]]:
        out = {}
        for depth in sorted({d for _, d in todo}):
            chosen = [p for p, d in todo if d == depth]
            labeled = dict(plan_of(p) for p in chosen)
            metrics = segments.compare(list(labeled.items()), depth, desc=f"reduced sweep, {len(chosen)} pair(s)")
            for pair, (label, _) in zip(chosen, labeled.items()):
                row = metrics[label]
                out[pair] = (max(row[key], 0.0), (row[high] - row[low]) / (2 * Z95))
        return out

    problem = build_problem(
        ws.units,
        ws.model,
        groups,
        {(n, f.name): 0.0 for g in groups for n in g.units for f in fmts},
        request.candidates,
        outside=ws.embedding_plan(),
    )
    limits = [budget_limit(problem, b, fmts) for b in budgets]
    display_of = {n: u.display for u in units for n in u.names}

    def solve_all(values: dict[Pair, float]) -> list[frozenset[Pair]]:
        problem.loss = loss_matrix(problem.groups, problem.options, problem.allowed, _module_losses(values, by_name))
        plans = []
        for limit in limits:
            chosen = solve(problem, limit)
            plans.append(
                frozenset(
                    (display_of[n], problem.options[o].name)
                    for g, o in enumerate(chosen)
                    if problem.options[o] is not None
                    for n in problem.groups[g].units
                )
            )
        return plans

    checked: set[frozenset[Pair]] = set()

    def check(plans: list[frozenset[Pair]]) -> list[tuple[float, float]]:
        labeled = {
            f"check {i}": Plan.of({n: formats[f] for u, f in plan for n in by_name[u].names})
            for i, plan in enumerate(plans)
        }
        checked.update(plans)
        metrics = segments.compare(list(labeled.items()), 1, desc="plan checks")
        return [(metrics[label][low], metrics[label][high]) for label in labeled]

    always = frozenset(
        p for p in pairs if formats[p[1]].input_quantizer() is not None
    )  # no weight error predicts these
    result = refine(
        pairs,
        errors,
        anchors,
        _second(fmts, always),
        measure,
        solve_all,
        check,
        max_depth=segments.count,
        seed=seed,
        always=always,
        shared_scale=estimate == "fisher",
        per_round=per_round or (max(4, -(-len(pairs) * FISHER_ROUND_SHARE // 1000)) if estimate == "fisher" else None),
    )
    losses = _module_losses(result.values, by_name)
    swept = sum(segments.tokens_upto(d) for d in result.depth.values())
    reference = segments.tokens_upto(max(result.depth.values(), default=1))  # FP32 on the segments anything used
    record = ReducedRecord(
        estimate=estimate,
        pairs=len(pairs),
        measured=len(result.measured),
        estimated=len(result.estimated),
        token_evaluations=swept + reference,
        reference_tokens=reference,
        full_token_evaluations=(len(pairs) + 1) * segments.total_tokens,
        segments=segments.count,
        screen_tokens=segments.tokens_upto(1),
        deeper=sum(d > 1 for d in result.depth.values()),
        plan_checks=len(checked),
        plan_check_tokens=len(checked) * segments.tokens_upto(1),
        anchor=_anchor(fmts).name,
        second=_second(fmts, always),
        alpha=result.model.alpha,
        always_measured=len(always),
        agreement=result.agreement(),
        rounds=result.rounds,
        estimated_pairs=sorted(f"{u}@{f}" for u, f in result.estimated),
        seconds=time.perf_counter() - started,
    )
    return ReducedSweep(losses, result, record)


def fisher_errors(ws: Workspace, units: dict, pairs: list[Pair], formats: dict[str, Format]) -> dict[Pair, float]:
    """Each pair's mean KL predicted by the diagonal Fisher of the first data segment (:mod:`quantsense.sweeps.fisher`),
    with the runtime's rounding of the inputs when the workspace measures it; a format that quantizes rows alone is
    quantized on each tensor's row sample only."""
    from quantsense.sweeps.fisher import fisher_pass

    runtime = ws.applier.runtime_activations
    roundings = list(
        dict.fromkeys(r for f in formats.values() if runtime and (r := f.activation_rounding()) is not None)
    )
    names = [n for u in units.values() for n in u.names]
    found = fisher_pass(
        ws.model,
        ws.units,
        names,
        ws.segments().parts[0],
        ws.task.head().kwargs_for,
        roundings,
        draws=FISHER_DRAWS,
        seed=ws.options.seed,
        device=ws.device,
    )
    samples = {n: sample for n in names if (sample := found.row_sample(n, ws.units.get(n).transposed)) is not None}
    out = {}
    for u, f in pairs:
        fmt = formats[f]
        used = samples if fmt.rows_independent else {}  # a format that quantizes rows alone is quantized on a sample
        delta = {n: _error(ws, n, fmt, used.get(n)) for n in units[u].names}
        out[(u, f)] = found.predicted_kl(units[u].names, delta, fmt.activation_rounding() if runtime else None, used)
    return out


def _error(ws: Workspace, name: str, fmt: Format, sample) -> "torch.Tensor":
    """``W - Q(W)`` of module ``name``: whole, or only the rows of ``sample`` (a RowSample), quantized on their own
    (the format quantizes each row alone, so they come out as they would in the whole tensor)."""
    weight = ws.applier.original(name)
    if sample is None:
        return weight.float() - ws.applier.quantized(name, fmt).float()
    part = weight[:, sample.index] if sample.transposed else weight[sample.index]
    return part.float() - fmt.quantize_weight(part, sample.transposed, name, ws.units.get(name).kind).float()


def _calibration(anchors: dict[str, str], errors: dict[Pair, float], count: int) -> dict[str, str]:
    """The anchors of ``count`` units spread evenly over the ranks of their predicted anchor loss (the largest always
    among them): what the shared scale of the predictions is measured on."""
    ranked = sorted(anchors, key=lambda u: (-errors[(u, anchors[u])], u))
    if count >= len(ranked):
        return anchors
    picks = sorted({round(i * (len(ranked) - 1) / max(count - 1, 1)) for i in range(count)})
    return {ranked[i]: anchors[ranked[i]] for i in picks}


def sequential_sweep(ws: Workspace, entries, key: str, total: int) -> tuple[list[dict], SequentialRecord]:
    """Rows of the ``only`` entries, each format's units measured on growing data prefixes until their tiers are
    decided, and the record of what that cost against measuring every entry on all the data."""
    segments = ws.segments()
    by_label = {e.label: e for e in entries}
    low, high = interval_keys(key)
    rows, depths = [], {}
    for fmt in dict.fromkeys(e.format for e in entries):
        labels = [e.label for e in entries if e.format == fmt]

        def measure(chosen, depth):
            return segments.compare(
                [(label, by_label[label].plan) for label in chosen], depth, desc=f"sequential sweep at {fmt.name}"
            )

        found, depth = sequential_rows(labels, measure, segments.count, low, high)
        depths.update(depth)
        rows += [
            sweep_row(
                by_label[label],
                found[label],
                ws.applier,
                ws.units,
                100 * segments.tokens_upto(depth[label]) / segments.total_tokens,
            )
            for label in labels
        ]
    spent = sum(segments.tokens_upto(d) for d in depths.values())
    others = total - len(entries)  # rows of other views, measured on all the data
    reference = segments.total_tokens if others else segments.tokens_upto(max(depths.values(), default=1))
    record = SequentialRecord(
        evaluations=total,
        sequential_rows=len(entries),
        segments=segments.count,
        stopped_early=sum(d < segments.count for d in depths.values()),
        token_evaluations=spent + others * segments.total_tokens + reference,
        reference_tokens=reference,
        full_token_evaluations=(total + 1) * segments.total_tokens,
    )
    return rows, record


def screened_block_ranking(ws: Workspace, fmt: Format) -> list[int]:
    """Blocks, most sensitive first, by mean KL at ``fmt`` on the first data segment only (the reduced frontier's
    hand strategies: a comparison, not worth a full block sweep)."""
    entries = build_entries(ws.units, [fmt], "block")
    metrics = ws.segments().compare([(e.label, e.plan) for e in entries], 1, desc="block ranking (first segment)")
    return [e.unit.block for e in sorted(entries, key=lambda e: (-metrics[e.label]["kl_mean"], e.unit.block))]


def estimated_pairs(ws: Workspace, plan: Plan, unit: str, sweep: SweepRecord) -> int:
    """How many of the (unit, format) losses summed into ``plan``'s prediction were estimated, not measured."""
    estimated = set(getattr(sweep, "estimated_pairs", ()))
    display = {n: u.display for u in sweep_units(ws.units, unit) for n in u.names}
    return len({f"{display.get(name, name)}@{fmt.name}" for name, fmt in plan.assignments} & estimated)


def _module_losses(values: dict[Pair, float], by_name) -> dict[tuple[str, str], float]:
    """Per-unit values as the allocator takes them: per module, a block's loss shared equally by its modules."""
    return {(n, f): value / len(by_name[u].names) for (u, f), value in values.items() for n in by_name[u].names}


def _anchor(fmts: list[Format]) -> Format:
    """The candidate with the fewest bits: the largest loss, measured best relative to its noise."""
    return min(fmts, key=lambda f: (f.nominal_bits, f.name))


def _second(fmts: list[Format], always=frozenset()) -> str | None:
    """The next candidate up whose loss the model estimates (not one measured everywhere anyway), measured on a few
    units to fit the loss model's exponent."""
    measured = {f for _, f in always}
    ordered = [f for f in sorted(fmts, key=lambda f: (f.nominal_bits, f.name)) if f.name not in measured]
    return ordered[1].name if len(ordered) > 1 else None


def activation_errors(ws: Workspace, units: dict[str, tuple[str, ...]], fmts: list[Format]) -> dict[tuple, float]:
    """``(unit, rounding) -> E||W (r(x) - x)||^2 / E||W x||^2``: the relative output error that each format's runtime
    rounding ``r`` of the inputs (:meth:`~quantsense.quantization.formats.base.WeightFormat.activation_rounding`) causes
    in each unit's products, on the first data segment in FP32 (one forward pass; a unit's tied products, e.g. the
    output head that shares the token embedding, count for it)."""
    import torch

    roundings = list(dict.fromkeys(r for r in (f.activation_rounding() for f in fmts) if r is not None))
    noise: dict[tuple, float] = {}
    signal: dict[str, float] = {}

    def hook(unit: str, weight):
        def record(_module, args):
            x = args[0].detach().float()
            signal[unit] = signal.get(unit, 0.0) + float((x @ weight.t()).pow(2).sum())
            for r in roundings:  # a row the rounding's block does not divide comes back unchanged: no error
                noise[(unit, r)] = noise.get((unit, r), 0.0) + float(((r(x) - x) @ weight.t()).pow(2).sum())

        return record

    handles = []
    for unit, names in units.items():
        for name in names:
            found = ws.units.get(name)
            weight = found.weight.detach().float()
            weight = weight.t() if found.transposed else weight
            for module in [found.module, *found.tied_modules]:
                if not isinstance(module, torch.nn.Embedding):
                    handles.append(module.register_forward_pre_hook(hook(unit, weight)))
    try:
        with torch.inference_mode():
            for batch in ws.segments().parts[0]:
                ws.model(
                    **{k: v.to(ws.device) for k, v in batch.inputs.items()},
                    **ws.task.head().kwargs_for(ws.model, batch),
                )
    finally:
        for handle in handles:
            handle.remove()
    return {(unit, r): value / signal[unit] for (unit, r), value in noise.items() if signal.get(unit)}
