"""Turn a study's results dict into printed tables, CSV files, plots and a Markdown summary."""

from __future__ import annotations

from pathlib import Path

from quantsense.visualization.plots import (
    frontier_plot,
    sensitivity_bars,
    sensitivity_heatmap,
)
from quantsense.visualization.report import (
    markdown_table,
    write_atomic,
    write_csv,
    write_json,
)

SENS_COLUMNS = [("unit", "unit"), ("bits", "bits"), ("view", "view"), ("accuracy", "acc %"), ("drop", "drop pts"),
                ("drop_ci_low", "CI low"), ("drop_ci_high", "CI high"), ("mcnemar_p", "McNemar p"),
                ("fixed", "fixed"), ("broken", "broken"), ("flip_rate", "flip %"), ("kl_mean", "KL mean"),
                ("kl_p95", "KL p95"), ("logit_sqnr_db", "logit SQNR dB"), ("weight_sqnr_db", "weight SQNR dB")]
LM_SENS_COLUMNS = [("unit", "unit"), ("bits", "bits"), ("view", "view"), ("perplexity", "ppl"), ("ppl_ratio", "ppl ratio"),
                   ("delta_nll", "dNLL/token"), ("delta_nll_ci_low", "CI low"), ("delta_nll_ci_high", "CI high"),
                   ("kl_mean", "KL mean"), ("kl_ci_low", "KL CI low"), ("kl_ci_high", "KL CI high"), ("kl_p95", "KL p95"),
                   ("top1_agreement", "top-1 agree %"), ("weight_sqnr_db", "weight SQNR dB")]
LM_RANK_COLUMNS = [("rank", "rank"), ("unit", "unit"), ("kl_mean", "KL mean"), ("kl_ci_low", "KL CI low"),
                   ("kl_ci_high", "KL CI high"), ("ppl_ratio", "ppl ratio"), ("tie_group", "tie group"),
                   ("distinguishable_from_fp32", "differs from FP32")]
LM_PLAN_COLUMNS = [("plan", "plan"), ("perplexity", "ppl"), ("ppl_ratio", "ppl ratio"), ("delta_nll", "dNLL/token"),
                   ("kl_mean", "KL mean"), ("kl_p95", "KL p95"), ("top1_agreement", "top-1 agree %"),
                   ("avg_bits", "avg bits/weight"), ("model_mb", "model MB")]
PROXY_COLUMNS = [("unit", "unit"), ("bits", "bits"), ("weight_error", "weight error"), ("calib_kl", "calib KL"),
                 ("fisher", "Fisher")]
CORR_COLUMNS = [("bits", "bits"), ("proxy", "proxy"), ("units", "units"), ("spearman_vs_kl", "Spearman vs KL"),
                ("spearman_vs_drop", "Spearman vs drop")]
RANK_COLUMNS = [("rank", "rank"), ("unit", "unit"), ("kl_mean", "KL mean"), ("kl_ci_low", "KL CI low"),
                ("kl_ci_high", "KL CI high"), ("drop", "drop pts"), ("mcnemar_p", "McNemar p"),
                ("tie_group", "tie group"), ("distinguishable_from_fp32", "differs from FP32")]
PLAN_COLUMNS = [("plan", "plan"), ("accuracy", "acc %"), ("drop", "drop pts"), ("drop_ci_low", "CI low"),
                ("drop_ci_high", "CI high"), ("mcnemar_p", "McNemar p"), ("flip_rate", "flip %"),
                ("kl_mean", "KL mean"), ("avg_bits", "avg bits/weight"), ("model_mb", "model MB"),
                ("compression", "x smaller")]


def _is_lm(rows: list[dict]) -> bool:
    return bool(rows) and "perplexity" in rows[0]


def baseline_text(base: dict) -> str:
    if "perplexity" in base:
        return (f"FP32 perplexity: {base['perplexity']:.3f} on {base['scored_tokens']} scored tokens "
                f"(first {base['max_tokens']} tokens, context {base['context']}, stride {base['stride']})")
    return f"FP32 accuracy: {base['accuracy']:.2f} % ({base['correct']}/{base['n']})"


def sensitivity_text(sens: dict) -> str:
    lm = _is_lm(sens["rows"])
    recovery = [("kl_recovered", "KL recovered"), ("delta_nll_recovered" if lm else "drop_recovered", "loss recovered")]
    columns = (LM_SENS_COLUMNS if lm else SENS_COLUMNS) + (recovery if "all_but" in sens["views"] else [])
    parts = [markdown_table(sens["rows"], columns, digits=3)]
    for key, ranked in sens["rankings"].items():
        parts.append(f"\nRanking {key} by {sens['rank_by']} (most sensitive first; same tie group = not distinguishable):")
        parts.append(markdown_table(ranked, LM_RANK_COLUMNS if lm else RANK_COLUMNS, digits=4))
        parts.append(ranking_verdict(ranked, sens["rank_by"], lm))
    return "\n".join(parts)


def proxies_text(prox: dict) -> str:
    cal = prox["calibration"]
    return "\n".join([
        f"Proxies on {cal['examples']} calibration examples from {cal['source']} (disjoint from the evaluation set):",
        markdown_table(prox["rows"], PROXY_COLUMNS, digits=4),
        "",
        "Spearman rank correlation of each proxy with the measured full-set sweep:",
        markdown_table(prox["correlations"], CORR_COLUMNS, digits=3),
    ])


FRONTIER_COLUMNS = [("plan", "plan"), ("kind", "kind"), ("avg_bits", "avg bits/weight"), ("model_mb", "model MB"),
                    ("accuracy", "acc %"), ("drop", "drop pts"), ("drop_ci_low", "CI low"), ("drop_ci_high", "CI high"),
                    ("mcnemar_p", "McNemar p"), ("kl_mean", "KL mean"), ("predicted_loss", "predicted loss"),
                    ("measured_over_predicted", "measured/predicted")]


LM_FRONTIER_COLUMNS = [("plan", "plan"), ("kind", "kind"), ("avg_bits", "avg bits/weight"), ("model_mb", "model MB"),
                       ("perplexity", "ppl"), ("ppl_ratio", "ppl ratio"), ("kl_mean", "KL mean"),
                       ("top1_agreement", "top-1 agree %"), ("predicted_loss", "predicted loss"),
                       ("measured_over_predicted", "measured/predicted")]


def frontier_text(fr: dict) -> str:
    lines = [f"Allocation ({fr['granularity']} units, candidates {fr['candidates']} + FP32, objective: sum of "
             f"single-unit {'mean KL' if fr['objective'] == 'kl' else 'accuracy drop'}); every plan measured:",
             markdown_table(fr["rows"], LM_FRONTIER_COLUMNS if _is_lm(fr["rows"]) else FRONTIER_COLUMNS, digits=4)]
    for name, choice in fr["choices"].items():
        counts: dict = {}
        for bits in choice.values():
            key = "fp32" if bits is None else f"int{bits}"
            counts[key] = counts.get(key, 0) + 1
        detail = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))
        if len(choice) <= 12:
            detail = ", ".join(f"{g}: {'fp32' if b is None else f'int{b}'}" for g, b in choice.items())
        lines.append(f"{name}: {detail}")
    return "\n".join(lines)


def export_text(rep: dict) -> str:
    lines = [
        f"Exported to {rep['out']} (plan: {rep['plan_avg_bits']:.3f} bits per block linear weight)",
        f"weights on disk: {rep['disk_bytes'] / 1e6:.2f} MB vs FP32 {rep['fp32_disk_bytes'] / 1e6:.2f} MB: "
        f"{rep['disk_factor']:.3f}x smaller; predicted for torchao's int8-container layout {rep['predicted_factor']:.3f}x "
        f"(packed sub-byte storage would give {rep['packed_factor']:.3f}x)",
    ]
    if "exported_perplexity" in rep:
        lines += [
            f"reloaded in a fresh process with transformers + torchao only (weights: {rep['reloaded_weight_class']}, "
            f"quantsense imported: {rep['quantsense_imported_by_reload']})",
            f"perplexity: exported {rep['exported_perplexity']:.4f}, simulated {rep['simulated_perplexity']:.4f}; "
            f"largest per-token log-prob difference {rep['max_token_logprob_difference']:.2e}",
        ]
    if "note" in rep:
        lines.append(rep["note"])
    if "exported_accuracy" in rep:
        lines += [
            f"reloaded in a fresh process with transformers + torchao only (weights: {rep['reloaded_weight_class']}, "
            f"quantsense imported: {rep['quantsense_imported_by_reload']})",
            f"accuracy: exported {rep['exported_accuracy']:.2f} %, simulated {rep['simulated_accuracy']:.2f} %, "
            f"{rep['predictions_differing']} predictions differ",
            f"CPU latency per batch {tuple(rep['latency_batch_shape'])}: exported {rep['latency_exported_ms']:.1f} ms, "
            f"FP32 {rep['latency_fp32_ms']:.1f} ms ({rep['latency_exported_ms'] / rep['latency_fp32_ms']:.2f}x)",
        ]
    return "\n".join(lines)


def ranking_verdict(ranked: list[dict], metric: str, lm: bool) -> str:
    """One sentence a reader can act on: which units measurably differ from FP32, how many tiers."""
    differs = [r["unit"] for r in ranked if r["distinguishable_from_fp32"]]
    groups = max((r["tie_group"] for r in ranked), default=0)
    test = "a per-token NLL interval excluding 0" if lm else "exact McNemar p < 0.05"
    if not differs:
        head = f"No unit's {'perplexity' if lm else 'accuracy'} differs measurably from FP32 ({test})"
    else:
        head = f"{len(differs)} of {len(ranked)} units differ measurably from FP32 ({test}): {', '.join(differs[:8])}"
        head += " ..." if len(differs) > 8 else ""
    return f"{head}; by {metric} the units fall into {groups} tier(s) whose intervals do not overlap."


def plans_text(rows: list[dict]) -> str:
    return markdown_table(rows, LM_PLAN_COLUMNS if _is_lm(rows) else PLAN_COLUMNS, digits=3)


def ablation_text(abl: dict) -> str:
    if "perplexity" in abl:
        return (f"Ablation: only block {abl['block']} (least sensitive) at INT{abl['bits']}, all others FP32: "
                f"perplexity {abl['perplexity']:.3f} (x{abl['ppl_ratio']:.4f}), KL {abl['kl_mean']:.2e}")
    return (f"Ablation: only block {abl['block']} (least sensitive) at INT{abl['bits']}, all others FP32: "
            f"{abl['accuracy']:.2f} % ({abl['correct']}/{abl['n']}), drop {abl['drop']:.2f} points "
            f"[95% CI {abl['drop_ci_low']:.2f}, {abl['drop_ci_high']:.2f}], McNemar p = {abl['mcnemar_p']:.3g}")


def _data_size(data: dict) -> str:
    if "examples" in data:
        return f"{data['examples']} examples"
    return f"first {data['tokens']} tokens, context {data['context']}, stride {data['stride']}"


def summary_markdown(results: dict) -> str:
    ws = results["workspace"]
    lines = [
        "# quantsense results",
        "",
        f"Model `{ws['model']['source']}` ({ws['model']['blocks']} blocks, weights {ws['model']['fingerprint']}), "
        f"data `{ws['data']['source']}` ({_data_size(ws['data'])}), scheme `{ws['scheme']}`.",
        f"Command: `{results['provenance']['command']}`",
        "",
        "## Phase 1: FP32 baseline",
        "",
        baseline_text(results["baseline"]),
    ]
    if "sensitivity" in results:
        lines += ["", "## Phase 2: sensitivity", "", "![sensitivity](sensitivity.png)", "",
                  sensitivity_text(results["sensitivity"])]
    if "proxies" in results:
        lines += ["", "## Cheap proxies, validated", "", proxies_text(results["proxies"])]
    if "frontier" in results:
        lines += ["", "## Budgeted allocation and frontier", "", "![frontier](frontier.png)", "",
                  frontier_text(results["frontier"])]
    if "mixed" in results:
        lines += ["", "## Phase 3: mixed precision", "", plans_text(results["mixed"]["rows"])]
    if "ablation" in results:
        lines += ["", "## Ablation", "", ablation_text(results["ablation"])]
    return "\n".join(lines) + "\n"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name.replace(" bits/weight", "bits"))


def write_results_folder(out: Path, results: dict) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [write_json(out / "results.json", results)]
    if "sensitivity" in results:
        sens = results["sensitivity"]
        written.append(write_csv(out / "sensitivity.csv", sens["rows"]))
        ranked = [{"ranking": key, **r} for key, rows in sens["rankings"].items() for r in rows]
        written.append(write_csv(out / "rankings.csv", ranked))
        written.append(sensitivity_bars(sens["rows"], out / "sensitivity.png"))
        written.append(sensitivity_heatmap(sens["rows"], out / "heatmap.png"))
    if "proxies" in results:
        written.append(write_csv(out / "proxies.csv", results["proxies"]["rows"]))
        written.append(write_csv(out / "proxy_correlations.csv", results["proxies"]["correlations"]))
    if "frontier" in results:
        fr = results["frontier"]
        written.append(write_csv(out / "frontier.csv", fr["rows"]))
        written.append(frontier_plot(fr["rows"], out / "frontier.png"))
        for name, plan in fr["plans"].items():
            written.append(write_json(out / "plans" / f"{_slug(name)}.json", plan))
        if len(fr["plans"]) == 1:
            written.append(write_json(out / "plan.json", next(iter(fr["plans"].values()))))
    if "mixed" in results:
        written.append(write_csv(out / "mixed.csv", results["mixed"]["rows"]))
    if "ablation" in results:
        written.append(write_csv(out / "ablation.csv", [results["ablation"]]))
    summary = out / "summary.md"
    write_atomic(summary, summary_markdown(results))
    written.append(summary)
    return written
