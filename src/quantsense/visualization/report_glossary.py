"""The report's glossary: general terms, the task's own, the sections present, and one line per format family."""

from __future__ import annotations

from quantsense.visualization.report_text import esc
from quantsense.visualization.schema import TaskInfo, format_glossary, plan_rows

GENERAL = [
    (
        "mean KL(FP32 || quantized)",
        "Kullback–Leibler divergence of the quantized model's output distribution from "
        "FP32's, averaged over examples (tokens for a language model), in nats; 0 means identical outputs.",
    ),
    (
        "95% CI",
        "95% confidence interval: the range the true value lies in with 95% confidence given the evaluation "
        "set's sampling noise. A loss whose CI includes 0 is indistinguishable from FP32.",
    ),
    (
        "bits/weight",
        "stored bits per weight including scales (and offsets), e.g. q4_0 is 4.5, int4 per channel slightly above 4.",
    ),
]
SENSITIVITY = [
    ("rank", "order by mean KL within one view and format, 1 = most sensitive."),
    (
        "tier",
        "groups of units whose KL confidence intervals overlap (connected components); tier 1 is the most "
        "sensitive group. Units in one tier cannot be ordered reliably.",
    ),
    ("view", "only: just this unit is quantized; all_but: every unit except this one is quantized."),
    ("KL p95", "95th percentile of the per-example KL: the tail, not the average."),
    ("weight SQNR", "signal-to-quantization-noise ratio of the weights in dB (higher = closer)."),
]
PLANS = [
    (
        "allocated / uniform / hand",
        "allocated: formats chosen per unit by the solver for a bit budget; uniform: one "
        "format everywhere; hand: a fixed strategy for comparison.",
    ),
    ("compression", "FP32 model size divided by the plan's model size."),
    (
        "predicted loss",
        "the loss the allocator expected from the per-unit measurements; measured / predicted above 1 "
        "means units interact worse than additively.",
    ),
]


def glossary(results: dict, task: TaskInfo | None = None) -> list[tuple[str, str]]:
    """(term, explanation) pairs for this folder: nothing about a section it does not have."""
    task = task or TaskInfo.from_results(results)
    terms = [*GENERAL, *task.glossary, ("differs from FP32", f"yes when {task.differs_test}.")]
    if (results.get("sensitivity") or {}).get("rows"):
        terms += SENSITIVITY
    if plan_rows(results):
        terms += PLANS
    return terms + format_glossary(results)


def glossary_html(results: dict, task: TaskInfo) -> str:
    items = "".join(f"<dt>{esc(t)}</dt><dd>{esc(d)}</dd>" for t, d in glossary(results, task))
    return f"<aside class=glossary><h2>Glossary</h2><dl>{items}</dl></aside>"
