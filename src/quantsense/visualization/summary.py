"""Turn a study's results (the results.json dict) into printed text, CSV files, plots, summary.md and report.html.

Every function reads the task's names, columns and sentences from the results themselves (through
:mod:`.schema`): none asks the task registry, parses a name or guesses the task from row keys.
"""

from __future__ import annotations

import math


from quantsense.sweeps.record import ExhaustiveRecord, ReducedRecord, SequentialRecord, sweep_record
from quantsense.visualization.schema import (
    FP32,
    TaskInfo,
    baseline_summary,
    data_description,
    effect_summary,
    format_glossary,
    format_table,
    migrate,
    widest_first,
)
from quantsense.visualization.tables import markdown_table

PROXY_COLUMNS = [
    ("unit", "unit"),
    ("format", "format"),
    ("weight_error", "weight error"),
    ("calib_kl", "calib KL"),
    ("fisher", "Fisher"),
]
CORR_COLUMNS = [
    ("format", "format"),
    ("proxy", "proxy"),
    ("units", "units"),
    ("spearman_vs_kl", "Spearman vs KL"),
    ("spearman_vs_loss", "Spearman vs loss"),
]
DATA_COLUMN = ("data_pct", "data %")
FRONTIER_EXTRA = [
    ("kind", "kind"),
    ("predicted_loss", "predicted loss"),
    ("estimated_pairs", "estimated pairs"),
    ("measured_over_predicted", "measured/predicted"),
]
RECOVERY_COLUMNS = [("kl_recovered", "KL recovered"), ("loss_recovered", "loss recovered")]

GLOSSARY = [  # every study's terms; the task's and the formats' own come from the results (see glossary_terms)
    (
        "KL mean",
        "mean KL(FP32 || quantized) of the output distribution per example (or token), nats; 0 = unchanged. "
        "The default ranking metric: it separates units long before accuracy moves.",
    ),
    (
        "CI low / CI high",
        "95 % bootstrap interval (paired, seeded): examples resampled for classification, "
        "blocks of consecutive tokens for language models.",
    ),
    (
        "tier",
        "units chained by overlapping KL intervals share a tier; different tiers do not overlap (1 = most sensitive).",
    ),
    ("avg bits/weight", "stored bits per block linear weight, scales and zero points included (FP32 = 32)."),
]


def glossary_terms(results: dict) -> list[tuple[str, str]]:
    """summary.md's glossary: the general terms, the task's own and its test, one line per format family."""
    task = TaskInfo.from_results(results)
    return [
        *GLOSSARY,
        *task.glossary,
        ("differs from FP32", f"the task's test: {task.differs_test}."),
        *format_glossary(results),
    ]


def baseline_text(results: dict) -> str:
    return baseline_summary(results, TaskInfo.from_results(results))


def ranking_verdict(ranked: list[dict], results: dict) -> str:
    """One sentence a reader can act on: which units measurably differ from FP32, how many tiers."""
    task = TaskInfo.from_results(results)
    differs = [r["unit"] for r in ranked if r["distinguishable_from_fp32"]]
    tiers = max((r["tier"] for r in ranked), default=0)
    if not differs:
        head = f"No unit's {task.metric} differs measurably from FP32 ({task.differs_test})"
    else:
        head = (
            f"{len(differs)} of {len(ranked)} units differ measurably from FP32 ({task.differs_test}): "
            f"{', '.join(differs[:8])}{' ...' if len(differs) > 8 else ''}"
        )
    if tiers <= 1:
        return f"{head}; by KL all units form one tier (their intervals overlap in a chain): none is ranked apart."
    return f"{head}; by KL the units fall into {tiers} tiers, and no interval overlaps one from another tier."


def sensitivity_text(results: dict) -> str:
    sens, task = results["sensitivity"], TaskInfo.from_results(results)
    sweep = sweep_record(sens.get("sweep"))
    sequential = isinstance(sweep, SequentialRecord)
    share = [DATA_COLUMN] if sequential else []
    columns = [*task.sensitivity_columns, *share, *(RECOVERY_COLUMNS if "all_but" in sens["views"] else [])]
    parts = [markdown_table(sens["rows"], columns, digits=3)]
    for key, ranked in sens["rankings"].items():
        parts.append(f"\nRanking {key} by {sens['rank_by']} (most sensitive first; same tier = not ranked apart):")
        parts.append(markdown_table(ranked, [*task.ranking_columns, *share], digits=4))
        parts.append(ranking_verdict(ranked, results))
    if sequential:
        parts.append(sequential_text(sweep))
    if sweep is not None and sweep.skipped:
        parts.append(skipped_text(sweep.skipped))
    return "\n".join(parts)


def skipped_text(skipped: list[str]) -> str:
    """The (unit, format) pairs a sweep left out because the format cannot store those weights."""
    counts: dict[str, int] = {}
    for pair in skipped:
        fmt = pair.rsplit("@", 1)[1]
        counts[fmt] = counts.get(fmt, 0) + 1
    named = ", ".join(skipped[:6]) + (f" and {len(skipped) - 6} more" if len(skipped) > 6 else "")
    return (
        f"Not measured: {len(skipped)} (unit, format) pair(s) the format cannot store (a shape it does not fit, e.g. rows "
        f"not a multiple of its block, where llama.cpp writes a fallback type; or a kind of layer it leaves in float, e.g. "
        f"a classifier head in ONNX Runtime's): "
        + ", ".join(f"{fmt} x{n}" for fmt, n in counts.items())
        + f" ({named})."
    )


def sequential_text(sweep: SequentialRecord) -> str:
    """What a sequential sweep measured, against measuring every row on all the data."""
    rows = sweep.sequential_rows if sweep.sequential_rows is not None else sweep.evaluations
    others = sweep.evaluations - rows
    return (
        f"Sequential sweep: {rows} (unit, format) rows measured on growing data prefixes"
        + (f" (the {others} rows of other views on all the data)" if others else "")
        + f", {sweep.stopped_early} stopped before all {sweep.segments} data segments once their interval "
        f"overlapped no other unit's (their tier decided; column 'data %'); {sweep.token_evaluations:,} of "
        f"{sweep.full_token_evaluations:,} token evaluations, FP32 reference included ({sweep.share:.1f} %); "
        "--exhaustive measures every row on all the data."
    )


def block_ranking_text(results: dict) -> str:
    """The only-view ranking at the narrowest format with one, most sensitive first ('' when there is none)."""
    sens = results["sensitivity"]
    ranked = sens["rankings"]
    keys = [f"only@{f}" for f in widest_first(results, sens["formats"]) if f"only@{f}" in ranked]
    return f"Block ranking ({keys[-1]}), most sensitive first: {[r['unit'] for r in ranked[keys[-1]]]}" if keys else ""


def proxies_text(results: dict) -> str:
    prox = results["proxies"]
    cal = prox["calibration"]
    return "\n".join(
        [
            f"Proxies on {cal['examples']} calibration examples from {cal['source']} (disjoint from the evaluation set):",
            markdown_table(prox["rows"], PROXY_COLUMNS, digits=4),
            "",
            "Spearman rank correlation of each proxy with the measured full-set sweep:",
            markdown_table(prox["correlations"], CORR_COLUMNS, digits=3),
        ]
    )


def plans_text(results: dict, rows: list[dict], skipped: dict | None = None) -> str:
    table = markdown_table(rows, [*TaskInfo.from_results(results).plan_columns, ("formats", "formats")], digits=3)
    return "\n".join([table, *skipped_plans_lines(skipped)])


def skipped_plans_lines(skipped: dict | None) -> list[str]:
    """A line per plan (or group of plans) that was not measured, with why."""
    return [f"Not measured: {name}, since {why}" for name, why in (skipped or {}).items()]


def frontier_text(results: dict) -> str:
    results = migrate(results)
    fr = results["frontier"]
    task = TaskInfo.from_results(results)
    objective = "mean KL" if fr["objective"] == "kl" else task.loss_label
    lines = [
        f"Allocation ({fr['unit']} units, candidates {' '.join(fr['candidates'])} + FP32, objective: sum of "
        f"single-unit {objective}); every plan measured:",
        markdown_table(fr["rows"], [*task.plan_columns, *_frontier_extra(fr)], digits=4),
        *skipped_plans_lines(fr.get("skipped")),
        *_preferred_lines(fr),
    ]
    sweep = sweep_record(fr.get("sweep"))
    if sweep is not None:
        lines.append(sweep_text(sweep))
    if sweep is not None and sweep.embedding:
        emb = sweep.embedding
        lines.append(
            "Every measured plan also quantizes "
            + ", ".join(f"{n} at {f}" for n, f in emb["plan"].items())
            + f" (--embedding); its loss alone, measured ({emb['loss']:.4g}), is part of each allocation's predicted loss."
        )
    for name, choice in fr["choices"].items():
        if len(choice) <= 12:
            lines.append(f"{name}: " + ", ".join(f"{g}: {f or FP32}" for g, f in choice.items()))
            continue
        lines.append(f"{name}: {_count_text(choice.values())}")
        kinds = _by_layer_kind(choice, fr["groups"]) if fr["unit"] == "linear" else None
        if kinds:
            lines.append("  by layer kind: " + "; ".join(f"{k} {_count_text(f)}" for k, f in sorted(kinds.items())))
    return "\n".join(lines)


def _preferred_lines(fr: dict) -> list[str]:
    """A line per budget whose allocation measured worse than a given or preset plan within it (that plan is returned)."""
    key = "kl_mean" if fr["objective"] == "kl" else None
    rows = {r["plan"]: r for r in fr["rows"]}
    lines = []
    for name, other in (fr.get("preferred") or {}).items():
        mine, theirs = rows[name], rows[other]
        measure = f"{key} {theirs[key]:.4g} against the allocation's {mine[key]:.4g}" if key else "a lower loss"
        lines.append(
            f"{name}: {other} measured {measure} within the same budget, so {other} is the plan written for it "
            "(the allocation rests on single-unit losses; a plan measured whole is the better evidence)"
        )
    return lines


def _frontier_extra(fr: dict) -> list[tuple[str, str]]:
    """The frontier's own columns; 'estimated pairs' only when some prediction rests on estimates."""
    estimated = any(r.get("estimated_pairs") is not None for r in fr["rows"])
    return [c for c in FRONTIER_EXTRA if c[0] != "estimated_pairs" or estimated]


def sweep_text(sweep: ExhaustiveRecord | ReducedRecord) -> str:
    """How the single-unit losses behind the allocation were obtained, with the cost against a full sweep."""
    if isinstance(sweep, ExhaustiveRecord):
        return (
            f"Single-unit losses: all {sweep.pairs} (unit, format) pairs measured on all the data "
            f"({sweep.token_evaluations:,} token evaluations, {sweep.seconds:.1f} s)."
        )
    agree = sweep.agreement
    model = (
        f"loss model on the {agree['pairs']} pairs it predicted before they were measured: Spearman "
        f"{agree['spearman']:.3f}, median measured/predicted {agree['median_ratio']:.3f}"
        if agree.get("spearman") is not None
        and agree.get("median_ratio") is not None
        and math.isfinite(agree["spearman"])
        else f"{agree['pairs']} estimate(s) were checked by a measurement"
    )
    if sweep.estimate == "fisher":  # the predictions are KLs already, on the calibration units' common scale
        how = f"loss ~ S * Fisher-predicted KL^{sweep.alpha:.3f}, S from the measured units"
    else:
        how = f"loss ~ S_unit * weight error^{sweep.alpha:.3f}, anchor {sweep.anchor}"
    estimated = f"{sweep.estimated} estimated ({how})" if sweep.estimated else "none estimated"
    checked = f"{model[0].upper()}{model[1:]}. " if sweep.estimated else ""
    return (
        f"Single-unit losses (reduced sweep): {sweep.measured} of {sweep.pairs} (unit, format) pairs measured "
        f"({sweep.deeper} on more than one of {sweep.segments} data segments"
        + (
            f"; the {sweep.always_measured} in formats that quantize activations, which no weight error predicts, all "
            "measured"
            if sweep.always_measured
            else ""
        )
        + f"), {estimated}; "
        f"{sweep.token_evaluations:,} of a full sweep's {sweep.full_token_evaluations:,} token evaluations, "
        f"FP32 reference included ({sweep.share:.1f} %), plus {sweep.plan_checks} plan check(s) on "
        f"{sweep.screen_tokens:,} tokens each; {len(sweep.rounds)} round(s), {sweep.seconds:.1f} s. "
        f"{checked}{_last_check_text(sweep.rounds)}"
        + ("Predicted losses include the estimated pairs (column 'estimated pairs'); " if sweep.estimated else "")
        + "--exhaustive measures every pair on all the data."
    )


def _last_check_text(rounds: list[dict]) -> str:
    """Whether the last round's plans, measured on the first segment, held their predictions ('' without rounds)."""
    if not rounds:
        return ""
    held = rounds[-1]["plans_held"]
    if all(held):
        return "In the last round every plan's measured interval (first segment) contained its predicted loss. "
    return (
        f"In the last round {len(held) - sum(held)} of {len(held)} plans' measured intervals (first segment) did not "
        "contain their predicted loss when the refinement ended (its round limit, or nothing left to measure); "
        "--exhaustive measures every pair if that matters. "
    )


def _count_text(formats) -> str:
    """'q4_0 x3, q8_0 x1' for formats (None is FP32)."""
    counts: dict[str, int] = {}
    for fmt in formats:
        counts[fmt or FP32] = counts.get(fmt or FP32, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))


def _by_layer_kind(choice: dict, groups: dict) -> dict[str, list] | None:
    """A plan's formats by each group's ``layer_kind`` (from the frontier's ``groups``); None when a group is not
    described there."""
    if any(not (groups.get(g) or {}).get("layer_kind") for g in choice):
        return None
    kinds: dict[str, list] = {}
    for group, fmt in choice.items():
        kinds.setdefault(groups[group]["layer_kind"], []).append(fmt)
    return kinds


def ablation_text(results: dict) -> str:
    results = migrate(results)
    abl = results["ablation"]
    others = (
        "all other blocks FP32, " + ", ".join(f"{n} at {f}" for n, f in abl["outside"].items())
        if abl.get("outside")
        else "all others FP32"
    )
    return (
        f"Ablation: only block {abl['block']} (least sensitive) at {abl['format']}, {others}: "
        f"{effect_summary(abl, TaskInfo.from_results(results))}"
    )


def export_text(rep: dict) -> str:
    """The export report: its heading and the lines the writer and the task's check wrote beside their figures."""
    head = f"Exported to {rep['out']} ({rep['format']}; plan: {rep['plan_avg_bits']:.3f} bits per block linear weight)"
    return "\n".join([head, *rep.get("lines", [])])


def _grid_text(results: dict) -> str:
    """The integer grid, unless the format table says no format the study measured takes it."""
    table = format_table(results)
    if table and all(info.takes_scheme is False for info in table.values()):
        return ""
    return f"; int formats use the grid {_scheme_text(results['workspace']['scheme'])}"


def summary_markdown(results: dict) -> str:
    results = migrate(results)
    ws = results["workspace"]
    size = data_description(results)
    lines = [
        "# quantsense results",
        "",
        f"Model `{ws['model']['source']}` ({ws['model']['blocks']} blocks, {ws['model'].get('dtype', 'float32')}, "
        f"weights {ws['model']['fingerprint']}), task {ws['task']['name']}, data `{ws['data']['source']}`"
        + (f" ({size})" if size else "")
        + _grid_text(results)
        + ".",
        f"Command: `{results['provenance']['command']}`",
        "",
        "Open `report.html` for the interactive report.",
        "",
        "## Phase 1: FP32 baseline",
        "",
        baseline_text(results),
    ]
    if "sensitivity" in results:
        lines += [
            "",
            "## Phase 2: sensitivity",
            "",
            "![sensitivity](sensitivity.png)",
            "",
            "![heatmap](heatmap.png)",
            "",
            sensitivity_text(results),
        ]
    if "proxies" in results:
        lines += ["", "## Cheap proxies, validated", "", proxies_text(results)]
    if "frontier" in results:
        lines += [
            "",
            "## Budgeted allocation and frontier",
            "",
            "![frontier](frontier.png)",
            "",
            frontier_text(results),
        ]
    if "mixed" in results:
        lines += [
            "",
            "## Phase 3: mixed precision",
            "",
            plans_text(results, results["mixed"]["rows"], results["mixed"].get("skipped")),
        ]
    if "ablation" in results:
        lines += ["", "## Ablation", "", ablation_text(results)]
    if "export" in results:
        lines += ["", "## Export", "", export_text(results["export"])]
    lines += ["", "## Glossary", ""] + [f"- **{term}**: {text}" for term, text in glossary_terms(results)]
    return "\n".join(lines) + "\n"


def _scheme_text(scheme: dict) -> str:
    text = "symmetric" if scheme.get("symmetric", True) else "asymmetric"
    grain = scheme.get("granularity", "per_channel").replace("_", "-")
    return f"{text} {grain}" + (f" (groups of {scheme['group_size']})" if scheme.get("group_size") else "")
