import numpy as np
import pytest

from quantsense.study import proxies, sensitivity
from quantsense.sweeps.proxies import proxy_correlations
from quantsense.workspace import open_workspace


@pytest.fixture(scope="module")
def ws(tiny_model_dir, sst2_validation):
    return open_workspace(str(tiny_model_dir), data=str(sst2_validation), limit=60, device="cpu", quiet=True)


def test_linear_sweep_covers_every_unit_with_both_views(ws):
    sens = sensitivity(ws, ["int4"], "linear", ("only", "all_but"))
    linear = ws.units.linear_units()
    for view in ("only", "all_but"):
        assert sorted(r["unit"] for r in sens.rows if r["view"] == view) == sorted(linear)
    everything = [r for r in sens.rows if r["view"] == "all"]
    assert len(everything) == 1
    for row in sens.rows:
        if row["view"] == "all_but":
            assert row["kl_recovered"] == pytest.approx(everything[0]["kl_mean"] - row["kl_mean"])
    assert everything[0]["kl_mean"] > 0
    ranked = sens.rankings["all_but@int4"]
    assert [r["kl_mean"] for r in ranked] == sorted(r["kl_mean"] for r in ranked)  # least KL left = most sensitive


def test_extra_units_can_be_swept(ws):
    sens = sensitivity(ws, ["int8"], "linear", ("only",), include_extra=True)
    units = {r["unit"] for r in sens.rows}
    assert "bert.embeddings.word_embeddings" in units and "classifier" in units


def test_block_sweep_intervals_and_ranking(ws):
    sens = sensitivity(ws, [8, 2], "block")
    assert sens.formats == ["int8", "int2"] and sens.lowest_format() == "int2"
    assert sorted(sens.block_ranking()) == [0, 1, 2]
    int2 = sens.rankings["only@int2"]
    assert [r["rank"] for r in int2] == [1, 2, 3]
    assert all(r["kl_ci_low"] <= r["kl_mean"] <= r["kl_ci_high"] for r in sens.rows)
    kl8 = np.mean([r["kl_mean"] for r in sens.rows if r["format"] == "int8"])
    kl2 = np.mean([r["kl_mean"] for r in sens.rows if r["format"] == "int2"])
    assert kl2 > 100 * kl8


def test_proxies_report_spearman_against_the_measured_sweep(ws, sst2_validation, tmp_path):
    calib = tmp_path / "calib.tsv"
    lines = sst2_validation.read_text().splitlines()
    calib.write_text("\n".join([lines[0], *lines[61:141]]) + "\n")  # rows beyond the 60 evaluated
    result = proxies(ws, str(calib), 64, ["int8", "int3"], "block")
    assert result["calibration"]["examples"] == 64
    assert {r["proxy"] for r in result["correlations"]} == {"weight_error", "calib_kl", "fisher"}
    assert all(r["fisher"] >= 0 and r["calib_kl"] >= 0 for r in result["rows"])
    pooled = {r["proxy"]: r for r in result["correlations"] if r["format"] == "all"}
    assert pooled["calib_kl"]["spearman_vs_kl"] > 0.5  # pooled over bit-widths the proxies must track KL


def test_calibration_excludes_evaluation_sentences(ws, sst2_validation):
    from quantsense.errors import QuantsenseError

    with pytest.raises(QuantsenseError, match="not in the evaluation set"):
        proxies(ws, str(sst2_validation), 900, ["int4"], "block")


def test_spearman_known_values():
    measured = [
        {"unit": u, "format": "int4", "view": "only", "kl_mean": k, "drop": d}
        for u, k, d in [("a", 0.1, 1.0), ("b", 0.2, 0.0), ("c", 0.3, 2.0), ("d", 0.4, 3.0)]
    ]
    proxy = [
        {"unit": u, "format": "int4", "weight_error": w, "calib_kl": c, "fisher": f}
        for u, w, c, f in [("a", 4, 1, 1), ("b", 3, 2, 2), ("c", 2, 3, 3), ("d", 1, 4, 4)]
    ]
    corr = {r["proxy"]: r for r in proxy_correlations(proxy, measured, "drop")}
    assert corr["calib_kl"]["spearman_vs_kl"] == pytest.approx(1.0)
    assert corr["weight_error"]["spearman_vs_kl"] == pytest.approx(-1.0)
    assert corr["fisher"]["spearman_vs_loss"] == pytest.approx(0.8)
