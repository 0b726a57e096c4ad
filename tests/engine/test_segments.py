"""Segments: a plan scored on part of the data equals the full evaluation restricted to those examples, and every
segment evaluation is stored, or sliced from a stored full evaluation, so nothing is computed twice."""

import numpy as np
import pytest

import quantsense as qs
from quantsense.engine.segments import Segments
from quantsense.evaluation.metrics import kl_per_example
from quantsense.quantization.plan import Plan

SETTINGS = {"cls": {"batch_tokens": 96}, "lm": {"task": "wikitext", "max_tokens": 4096, "context": 128, "stride": 128}}


def _workspace(offline_assets, kind, store):
    data = offline_assets["tsv"] if kind == "cls" else offline_assets["text"]
    return qs.open_workspace(str(offline_assets[kind]), data=str(data), quiet=True, store=str(store), **SETTINGS[kind])


def _kl(ws, reference, result):
    return result.arrays["kl"] if "kl" in result.arrays else kl_per_example(reference.logits, result.logits)


@pytest.mark.parametrize("kind", ["cls", "lm"])
def test_segments_assemble_to_the_full_evaluation_and_a_prefix_is_its_restriction(offline_assets, tmp_path, kind):
    ws = _workspace(offline_assets, kind, tmp_path / "store.sqlite")
    fmt = ws.format("int4")
    plan = Plan.of({n: fmt for n in ws.units.block_units(1)})
    segments = Segments(ws.engine, ws.task, ws.data, count=4)
    assert segments.count == 4 and len(ws.batches) >= 4
    assembled = segments.results([("p", plan)], 4)["p"]
    full = ws.engine.evaluate_many([("p", plan)])["p"]
    assert assembled.arrays.keys() == full.arrays.keys()
    for key in full.arrays:  # bit for bit: the same batches through the same forward
        np.testing.assert_array_equal(assembled.arrays[key], full.arrays[key])
    kl = _kl(ws, ws.reference(), full)
    rows = np.sort(np.concatenate(segments.rows[:2]))
    assert 0 < len(rows) < len(kl)
    half = segments.compare([("p", plan)], 2)["p"]
    assert half["kl_mean"] == pytest.approx(float(kl[rows].mean()), rel=1e-6)
    everything = segments.compare([("p", plan)], 4)["p"]
    assert everything["kl_mean"] == pytest.approx(ws.compare(ws.reference(), full)["kl_mean"], rel=1e-9)
    assert segments.tokens_upto(4) == segments.total_tokens == ws.batches.num_tokens


def test_segment_results_come_from_the_store_or_from_a_stored_full_evaluation(offline_assets, tmp_path):
    store = tmp_path / "store.sqlite"
    ws = _workspace(offline_assets, "cls", store)
    fmt = ws.format("int4")
    plans = [(f"b{i}", Plan.of({n: fmt for n in ws.units.block_units(i)})) for i in range(2)]
    first = Segments(ws.engine, ws.task, ws.data, count=3).compare(plans[:1], 2)
    ws.engine.evaluate_many(plans[1:])  # block 1's full evaluation, stored
    again = _workspace(offline_assets, "cls", store)
    before = again.engine.stats.computed
    second = Segments(again.engine, again.task, again.data, count=3).compare(plans, 2)
    assert again.engine.stats.computed == before  # block 0 from its stored segments, block 1 sliced from its full run
    assert second["b0"]["kl_mean"] == first["b0"]["kl_mean"]
    assert second["b1"]["kl_mean"] > 0
