import numpy as np
import pytest
from scipy.stats import binomtest

from quantsense.evaluation.metrics import (
    EvalResult,
    compare_classification,
    kl_per_example,
)
from quantsense.evaluation.statistics import (
    block_bootstrap_mean_ci,
    bootstrap_mean_ci,
    mcnemar_exact,
    overlap_tiers,
    paired_bootstrap_ci,
)
from quantsense.sweeps.ranking import rank_rows


def _logits(x):
    return EvalResult({"logits": x})


def test_identical_predictions_give_zero_width_interval_and_p_one():
    logits = np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32)
    labels = np.random.default_rng(1).integers(0, 2, 100)
    m = compare_classification(_logits(logits), _logits(logits.copy()), labels)
    assert m["drop"] == m["drop_ci_low"] == m["drop_ci_high"] == 0.0
    assert m["mcnemar_p"] == 1.0 and not m["distinguishable_from_fp32"]
    assert m["fixed"] == m["broken"] == 0
    assert m["flip_rate"] == 0.0 and m["kl_mean"] == 0.0
    assert m["logit_sqnr_db"] == float("inf")


def test_mcnemar_hand_computed():
    # b=1, c=5: P(X<=1 | n=6) = (1 + 6) / 64, two-sided doubles it
    assert mcnemar_exact(1, 5) == pytest.approx(14 / 64)
    assert mcnemar_exact(5, 1) == pytest.approx(14 / 64)
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
    for b, c in [(2, 9), (10, 25), (0, 1)]:
        assert mcnemar_exact(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue)


def test_small_discordant_table_through_compare():
    labels = np.zeros(20, dtype=int)
    ref = np.tile([[1.0, 0.0]], (20, 1))  # all correct
    q = ref.copy()
    q[:6] = [0.0, 1.0]  # 6 broken
    labels_q = labels.copy()
    m = compare_classification(_logits(ref), _logits(q), labels_q)
    assert (m["broken"], m["fixed"]) == (6, 0)
    assert m["drop"] == pytest.approx(30.0)
    assert m["mcnemar_p"] == pytest.approx(2 / 64) and m["distinguishable_from_fp32"]
    assert m["drop_ci_low"] > 0 and m["drop_ci_high"] <= 60


def test_bootstrap_is_seeded_and_covers_the_mean():
    diff = np.r_[np.ones(10), -np.ones(3), np.zeros(87)]
    a = paired_bootstrap_ci(diff, seed=3)
    assert a == paired_bootstrap_ci(diff, seed=3)
    assert a[0] < diff.mean() < a[1]
    # the standard error of a mean of +-1/0 values: width close to 2 * 1.96 * sd / sqrt(n)
    width = a[1] - a[0]
    assert width == pytest.approx(2 * 1.96 * diff.std() / np.sqrt(len(diff)), rel=0.15)
    assert bootstrap_mean_ci(np.full(5, 2.5)) == (2.5, 2.5)


def test_kl_known_value():
    ref = np.log(np.array([[0.5, 0.5]]))
    q = np.log(np.array([[0.9, 0.1]]))
    expected = 0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1)
    assert kl_per_example(ref, q)[0] == pytest.approx(expected)


def _row(unit, kl, lo, hi):
    return {"unit": unit, "kl_mean": kl, "kl_ci_low": lo, "kl_ci_high": hi}


def test_tiers_are_connected_components_of_overlapping_intervals():
    # the counterexample: B overlaps both A and C, so all three form one tier
    # (comparing each unit only with its tier's first member wrongly split off C)
    rows = [_row("A", 1.0, 0.8, 1.2), _row("B", 0.85, 0.75, 0.95), _row("C", 0.7, 0.60, 0.78)]
    assert [r["tier"] for r in rank_rows(rows)] == [1, 1, 1]
    rows += [_row("D", 0.3, 0.2, 0.4), _row("E", 0.25, 0.1, 0.35)]
    ranked = rank_rows(rows)
    assert [r["unit"] for r in ranked] == ["A", "B", "C", "D", "E"]
    assert [r["tier"] for r in ranked] == [1, 1, 1, 2, 2]


@pytest.mark.parametrize("seed", range(20))
def test_tier_sentence_is_true_on_random_intervals(seed):
    """Intervals in different tiers never overlap; within a tier every member overlaps another (a chain)."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0, 10, 12)
    widths = rng.uniform(0.05, 1.5, 12)
    intervals = [(c - w, c + w) for c, w in zip(centers, widths)]
    tiers = overlap_tiers(intervals)
    for i, a in enumerate(intervals):
        for j, b in enumerate(intervals):
            overlap = a[0] <= b[1] and b[0] <= a[1]
            if tiers[i] != tiers[j]:
                assert not overlap
        if sum(t == tiers[i] for t in tiers) > 1:
            assert any(
                tiers[j] == tiers[i] and j != i and a[0] <= intervals[j][1] and intervals[j][0] <= a[1]
                for j in range(len(intervals))
            )
    order = sorted(range(12), key=lambda i: -centers[i])
    assert [tiers[i] for i in order] == sorted(tiers)  # tier numbers follow the ranking


def test_all_but_view_ranks_lowest_first():
    rows = [_row("a", 1.0, 0.9, 1.1), _row("b", 0.2, 0.1, 0.3)]
    ranked = rank_rows(rows, view="all_but")
    assert [r["unit"] for r in ranked] == ["b", "a"] and [r["tier"] for r in ranked] == [1, 2]


def test_block_bootstrap_widens_intervals_on_correlated_series():
    """Per-token losses are correlated; resampling single tokens understates the uncertainty of their mean."""
    rng = np.random.default_rng(0)
    slow = np.repeat(rng.normal(size=64), 64)  # runs of 64 equal values: strongly correlated neighbours
    values = slow + 0.1 * rng.normal(size=len(slow))
    lo1, hi1 = bootstrap_mean_ci(values)
    lo, hi = block_bootstrap_mean_ci(values, block=128)
    assert (hi - lo) > 4 * (hi1 - lo1)
    # the block interval is close to the truth: 64 independent runs of sd 1 -> se = 1/8
    assert (hi - lo) == pytest.approx(2 * 1.96 / 8, rel=0.35)
    assert block_bootstrap_mean_ci(values, block=1) == bootstrap_mean_ci(values)
