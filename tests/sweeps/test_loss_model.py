"""The per-unit loss model: exact on data it can represent, and predictive on a real sweep it never saw."""

import math

import numpy as np
import pytest

import quantsense as qs
from quantsense.errors import QuantsenseError
from quantsense.sweeps.loss_model import agreement, fit_alpha, fit_loss_model


def _synthetic(alpha=1.3, seed=0):
    rng = np.random.default_rng(seed)
    units = [f"u{i}" for i in range(8)]
    fmts = ["a", "b", "c", "d"]
    scale = {u: float(rng.uniform(0.1, 10)) for u in units}
    errors = {(u, f): float(rng.uniform(1e-4, 1e-1)) for u in units for f in fmts}
    losses = {k: scale[k[0]] * e**alpha for k, e in errors.items()}
    return units, fmts, scale, errors, losses


def test_recovers_alpha_and_every_scale_from_data_it_can_represent():
    units, fmts, scale, errors, losses = _synthetic()
    measured = {k: v for k, v in losses.items() if k[1] == "a" or (k[1] == "b" and k[0] in ("u0", "u1"))}
    model = fit_loss_model(measured, errors)
    assert model.alpha == pytest.approx(1.3, rel=1e-9)
    assert all(model.scale[u] == pytest.approx(scale[u], rel=1e-9) for u in units)
    predicted = model.predict_all(errors)
    assert all(predicted[k] == pytest.approx(losses[k], rel=1e-9) for k in losses)
    held_out = {k: v for k, v in losses.items() if k not in measured}
    agree = agreement(held_out, predicted)
    assert agree["spearman"] == pytest.approx(1.0) and agree["median_ratio"] == pytest.approx(1.0)


def test_without_a_second_format_alpha_is_one_and_zeros_are_handled():
    units, fmts, scale, errors, losses = _synthetic(alpha=1.0)
    measured = {(u, "a"): losses[(u, "a")] for u in units}
    assert fit_alpha(measured, errors) == 1.0
    measured[("u0", "a")] = 0.0  # a unit that measured no loss is predicted insensitive, not divided by zero
    model = fit_loss_model(measured, errors)
    assert model.scale["u0"] == 0.0 and model.predict("u0", 0.5) == 0.0 and model.predict("u1", 0.0) == 0.0
    with pytest.raises(QuantsenseError, match="no measurement of unit zz"):
        model.predict("zz", 0.1)
    with pytest.raises(QuantsenseError, match="no weight error for measured pair"):
        fit_loss_model({("u0", "zz"): 1.0}, errors)


def test_one_measurement_per_linear_unit_predicts_the_rest_of_a_real_sweep(offline_assets):
    """A tiny BERT's linear sweep at int3..int8: each unit measured at int4 alone predicts the other formats' mean KL
    (never used in the fit) with a rank correlation above 0.9 and a median ratio near 1."""
    from quantsense.sweeps.sweep import weight_error

    ws = qs.open_workspace(
        offline_assets["cls_model"], tokenizer=offline_assets["tokenizer"], data=str(offline_assets["tsv"]), quiet=True
    )
    sens = qs.sensitivity(ws, ["int3", "int4", "int5", "int6", "int8"], unit="linear")
    measured = {(r["unit"], r["format"]): r["kl_mean"] for r in sens.rows}
    fmts = {f.name: f for f in ws.formats(sens.formats)}
    errors = {(u, f): weight_error(ws.applier, (u,), fmts[f]) for u, f in measured}
    anchors = {k: v for k, v in measured.items() if k[1] == "int4"}
    model = fit_loss_model(anchors, errors)
    assert model.alpha == 1.0
    agree = agreement({k: v for k, v in measured.items() if k[1] != "int4"}, model.predict_all(errors))
    assert agree["pairs"] == 4 * len(anchors)
    assert agree["spearman"] > 0.9, agree
    assert 0.5 < agree["median_ratio"] < 2.0, agree
    assert math.isfinite(model.predict(next(iter(anchors))[0], 1e-3))
