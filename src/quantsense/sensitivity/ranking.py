"""Rankings that admit ties.

Units are ordered by a metric, most sensitive first. The default is the mean KL(FP32 || quantized)
of the output distribution: it moves continuously with the logits, so it separates units long
before the accuracy drop does (on 872 sentences one sentence is 0.11 points and most single-block
INT8 drops are zero or one sentence). Each unit carries:

- ``distinguishable_from_fp32``: exact McNemar p < alpha on its fixed/broken sentences
  (classification), or a per-token NLL-increase interval that excludes zero (language models);
- ``tie_group``: units whose 95 % bootstrap intervals of the metric overlap the group's first
  member's interval are in the same group (1 = most sensitive) and are not ranked apart.
"""

from __future__ import annotations

RANK_METRICS = {
    "kl_mean": ("kl_ci_low", "kl_ci_high"),
    "drop": ("drop_ci_low", "drop_ci_high"),
    "delta_nll": ("delta_nll_ci_low", "delta_nll_ci_high"),
    "flip_rate": (None, None),
}


def rank_rows(rows: list[dict], metric: str = "kl_mean", alpha: float = 0.05, view: str = "only") -> list[dict]:
    """Sorted copies of ``rows`` (one bit-width and view) with rank, tie group and significance.

    In the ``only`` view a larger metric means a more sensitive unit. In the ``all_but`` view the
    unit is the one kept FP32 while all others are quantized, so a *smaller* metric means that
    protecting it recovers more: the most sensitive unit is the one with the lowest value.
    """
    if metric not in RANK_METRICS:
        raise ValueError(f"unknown ranking metric {metric!r}; use one of {', '.join(RANK_METRICS)}")
    low_key, high_key = RANK_METRICS[metric]
    sign = 1 if view == "all_but" else -1
    ordered = sorted(rows, key=lambda r: (sign * r[metric], r["unit"]))
    ranked = []
    group = 0
    leader = None
    for position, row in enumerate(ordered, start=1):
        low = row[low_key] if low_key else row[metric]
        high = row[high_key] if high_key else row[metric]
        separate = leader is None or (high < leader[0] if sign < 0 else low > leader[1])
        if separate:
            group += 1
            leader = (low, high)
        differs = row["mcnemar_p"] < alpha if "mcnemar_p" in row else row["distinguishable_from_fp32"]
        ranked.append({**row, "rank": position, "tie_group": group, "distinguishable_from_fp32": bool(differs)})
    return ranked


def least_sensitive_blocks(ranked: list[dict], count: int = 1) -> list[int]:
    """Block indices of the ``count`` least sensitive blocks of a ranked block sweep."""
    return [int(r["unit"].split()[-1]) for r in ranked[::-1][:count]]
