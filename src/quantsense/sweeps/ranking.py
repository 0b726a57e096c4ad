"""Rankings that admit ties.

Units are ordered by a metric, most sensitive first. The default is the mean KL(FP32 || quantized)
of the output distribution: it moves continuously with the logits, so it separates units long
before the accuracy drop does (on 872 sentences one sentence is 0.11 points and most single-block
INT8 drops are zero or one sentence). Each ranked row carries:

- ``distinguishable_from_fp32``: set by the task's paired comparison (exact McNemar p < 0.05 for
  classification; a block-bootstrap interval of the NLL increase that excludes 0 for language models);
- ``tier``: connected components of overlapping 95 % intervals of the metric
  (:func:`quantsense.evaluation.statistics.overlap_tiers`); 1 = most sensitive. Units in different
  tiers have intervals that do not overlap; units within a tier are not ranked apart.
"""

from __future__ import annotations

from quantsense.evaluation.statistics import overlap_tiers


def interval_keys(metric: str) -> tuple[str, str]:
    """The row keys of ``metric``'s 95 % interval (``kl_mean`` -> ``kl_ci_low``/``kl_ci_high``)."""
    if metric == "kl_mean":
        return "kl_ci_low", "kl_ci_high"
    return f"{metric}_ci_low", f"{metric}_ci_high"


def rank_rows(rows: list[dict], metric: str = "kl_mean", view: str = "only") -> list[dict]:
    """Sorted copies of ``rows`` (one format and view) with rank and tier.

    In the ``only`` view a larger metric means a more sensitive unit. In the ``all_but`` view the
    unit is the one kept FP32 while all others are quantized, so a *smaller* metric means that
    protecting it recovers more: the most sensitive unit is the one with the lowest value.
    """
    low_key, high_key = interval_keys(metric)
    sign = 1 if view == "all_but" else -1
    ordered = sorted(rows, key=lambda r: (sign * r[metric], r["unit"]))
    intervals = [(sign * -r[high_key], sign * -r[low_key]) if sign > 0 else (r[low_key], r[high_key]) for r in ordered]
    tiers = overlap_tiers(intervals)
    return [
        {**row, "rank": position, "tier": tier} for position, (row, tier) in enumerate(zip(ordered, tiers), start=1)
    ]


def tier_count(ranked: list[dict]) -> int:
    return max((r["tier"] for r in ranked), default=0)
