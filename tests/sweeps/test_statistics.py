import numpy as np
import pytest
from scipy.stats import binomtest

from quantsense.evaluation.metrics import (
    EvalResult,
    compare_classification,
    kl_per_example,
)
from quantsense.sweeps.ranking import rank_rows
from quantsense.sweeps.statistics import (
    bootstrap_mean_ci,
    mcnemar_exact,
    paired_bootstrap_ci,
)


def test_identical_predictions_give_zero_width_interval_and_p_one():
    logits = np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32)
    labels = np.random.default_rng(1).integers(0, 2, 100)
    m = compare_classification(EvalResult.of_logits(logits), EvalResult.of_logits(logits.copy()), labels)
    assert m["drop"] == m["drop_ci_low"] == m["drop_ci_high"] == 0.0
    assert m["mcnemar_p"] == 1.0
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
    m = compare_classification(EvalResult.of_logits(ref), EvalResult.of_logits(q), labels_q)
    assert (m["broken"], m["fixed"]) == (6, 0)
    assert m["drop"] == pytest.approx(30.0)
    assert m["mcnemar_p"] == pytest.approx(2 / 64)
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


def _row(unit, kl, lo, hi, p=1.0):
    return {"unit": unit, "kl_mean": kl, "kl_ci_low": lo, "kl_ci_high": hi, "mcnemar_p": p}


def test_ranking_groups_overlapping_intervals():
    rows = [_row("a", 1.0, 0.8, 1.2), _row("b", 0.9, 0.7, 1.1), _row("c", 0.3, 0.2, 0.4, p=0.01), _row("d", 0.25, 0.1, 0.35)]
    ranked = rank_rows(rows)
    assert [r["unit"] for r in ranked] == ["a", "b", "c", "d"]
    assert [r["tie_group"] for r in ranked] == [1, 1, 2, 2]
    assert [r["distinguishable_from_fp32"] for r in ranked] == [False, False, True, False]
