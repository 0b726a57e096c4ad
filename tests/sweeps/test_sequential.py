"""Sequential evaluation: a unit stops as soon as its interval overlaps no other, and the tiers are those of the
intervals measured on all the data."""

import pytest

from quantsense.evaluation.statistics import overlap_tiers
from quantsense.sweeps.sequential import sequential_rows


def _measure(means, width, calls):
    def measure(labels, depth):
        calls.extend((label, depth) for label in labels)
        half = width / depth**0.5  # an interval narrows as the data grows
        return {
            label: {"kl_mean": means[label], "lo": means[label] - half, "hi": means[label] + half} for label in labels
        }

    return measure


def test_separated_units_stop_early_and_overlapping_ones_go_to_all_the_data():
    means = {"a": 10.0, "b": 5.0, "c": 4.6, "d": 1.0}
    calls = []
    rows, depth = sequential_rows(list(means), _measure(means, 1.0, calls), 4, "lo", "hi")
    assert depth == {"a": 1, "b": 4, "c": 4, "d": 1}
    assert ("a", 2) not in calls and ("b", 4) in calls
    full = _measure(means, 1.0, [])(list(means), 4)
    assert overlap_tiers([(rows[k]["lo"], rows[k]["hi"]) for k in means]) == overlap_tiers(
        [(full[k]["lo"], full[k]["hi"]) for k in means]
    )


def test_a_stopped_unit_goes_on_when_a_neighbour_comes_to_overlap_it():
    def measure(labels, depth):  # b (kept going by c) moves up with more data until it reaches a's interval
        b = 1.0 + 0.9 * (depth - 1)
        fixed = {"a": {"lo": 2.9, "hi": 3.1}, "c": {"lo": 0.5, "hi": 1.5}}
        return {label: fixed.get(label) or {"lo": b - 1.2 / depth, "hi": b + 1.2 / depth} for label in labels}

    rows, depth = sequential_rows(["a", "b", "c"], measure, 4, "lo", "hi")
    assert depth == {"a": 2, "b": 4, "c": 3}  # a stopped at 1, went on when b reached it at depth 3


@pytest.mark.parametrize("max_depth", [1, 3])
def test_never_beyond_the_data(max_depth):
    means = {"a": 1.0, "b": 1.0}
    calls = []
    _, depth = sequential_rows(list(means), _measure(means, 1.0, calls), max_depth, "lo", "hi")
    assert depth == {"a": max_depth, "b": max_depth} and max(d for _, d in calls) == max_depth
