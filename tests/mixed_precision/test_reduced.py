"""The reduced commands (the CLI's default): what they record is consistent, and on the seed study they reach the
decisions of the exhaustive sweep."""

import json

import pytest

import quantsense as qs
from quantsense.cli import main


def _results(path):
    return json.loads((path / "results.json").read_text())


@pytest.mark.parametrize("task", ["sst2", "wikitext"])
def test_reduced_frontier_records_what_it_measured_and_estimated(offline_assets, task, tmp_path, capsys):
    a = offline_assets
    lm = task == "wikitext"
    path, data = (a["lm"], a["text"]) if lm else (a["cls"], a["tsv"])
    flags = ["--max-tokens", "4096", "--context", "128", "--stride", "128"] if lm else ["--batch-tokens", "96"]
    candidates = ["q4_0", "q5_0", "q8_0"] if lm else ["int3", "int4", "int8"]
    out = tmp_path / "front"
    assert (
        main(
            [
                "frontier",
                "--task",
                task,
                "--model",
                str(path),
                "--data",
                str(data),
                *flags,
                "--budgets",
                "5",
                "6",
                "--unit",
                "linear",
                "--candidates",
                *candidates,
                "--no-store",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    front = _results(out)["frontier"]
    sweep = front["sweep"]
    assert sweep["mode"] == "reduced" and sweep["segments"] == 4
    assert (
        sweep["measured"] + sweep["estimated"] == sweep["pairs"] == 3 * len(front["choices"]["allocated@5 bits/weight"])
    )
    assert sweep["measured"] >= sweep["pairs"] // 3  # every unit once, at the anchor
    assert 0 < sweep["token_evaluations"] < sweep["full_token_evaluations"]
    assert f"{sweep['measured']} of {sweep['pairs']} (unit, format) pairs measured" in printed
    for row in front["rows"]:
        if row["kind"] == "allocated":
            assert (
                0 <= row["estimated_pairs"] <= sweep["estimated"]
                and row["avg_bits"] <= row["budget"]["avg_bits"] + 1e-9
            )
    ws = qs.open_workspace(
        str(path),
        data=str(data),
        task=task,
        quiet=True,
        **({"max_tokens": 4096, "context": 128, "stride": 128} if lm else {"batch_tokens": 96}),
    )
    again = qs.frontier(ws, [5, 6], candidates, unit="linear", reduced=True)
    assert again.plans == front["plans"] and again.sweep.estimated_pairs == sweep["estimated_pairs"]  # deterministic


def test_allocate_with_fisher_estimates_measures_a_few_units_and_keeps_the_budget(offline_assets, tmp_path, capsys):
    a = offline_assets
    out = tmp_path / "alloc"
    common = [
        "--task",
        "wikitext",
        "--model",
        str(a["lm"]),
        "--data",
        str(a["text"]),
        "--max-tokens",
        "4096",
        "--context",
        "128",
        "--stride",
        "128",
        "--unit",
        "linear",
        "--candidates",
        "q4_0",
        "q5_0",
        "q8_0",
        "--avg-bits",
        "6",
        "--no-store",
        "--quiet",
    ]
    assert main(["allocate", *common, "--estimate", "fisher", "--out", str(out)]) == 0
    assert "loss ~ S * Fisher-predicted KL^" in capsys.readouterr().out
    sweep = _results(out)["frontier"]["sweep"]
    assert sweep["estimate"] == "fisher" and sweep["pairs"] == 3 * 21  # 3 blocks of 7 linears
    assert 0.8 < sweep["alpha"] < 1.25  # the predictions scale across formats as the measurements do
    row = next(r for r in _results(out)["frontier"]["rows"] if r["kind"] == "allocated")
    assert row["avg_bits"] <= 6 + 1e-9 and row["kl_mean"] > 0
    assert main(["allocate", *common, "--estimate", "weight-error", "--out", str(tmp_path / "w")]) == 0
    weighted = _results(tmp_path / "w")["frontier"]["sweep"]
    assert weighted["estimate"] == "weight-error" and weighted["measured"] >= 21  # every unit once, at its anchor
    assert sweep["measured"] < weighted["measured"]
    assert "loss ~ S_unit * weight error^" in capsys.readouterr().out


def test_sequential_sweep_stops_only_units_alone_in_their_tier(offline_assets, tmp_path, capsys):
    a = offline_assets
    out = tmp_path / "sens"
    assert (
        main(
            [
                "sensitivity",
                "--model",
                str(a["cls"]),
                "--data",
                str(a["tsv"]),
                "--batch-tokens",
                "96",
                "--bits",
                "8",
                "3",
                "2",
                "--sequential",
                "--no-store",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    sens = _results(out)["sensitivity"]
    assert sens["sweep"]["mode"] == "sequential" and "Sequential sweep: 9 (unit, format) rows" in printed
    for fmt in ("int8", "int3", "int2"):
        rows = [r for r in sens["rows"] if r["format"] == fmt]
        for row in rows:
            assert 0 < row["data_pct"] <= 100
            others = [r for r in rows if r is not row]
            overlaps = any(row["kl_ci_low"] <= o["kl_ci_high"] and o["kl_ci_low"] <= row["kl_ci_high"] for o in others)
            assert row["data_pct"] == 100 or not overlaps
    assert sens["sweep"]["token_evaluations"] <= sens["sweep"]["full_token_evaluations"]


def test_seed_study_reduced_reaches_the_exhaustive_tiers_and_strategies(standin_dir, sst2_validation, tmp_path, capsys):
    """The MiniLM seed study (blocks, int8/int4) is measured on all the data by default (the reference study's table:
    every block x format on all 872 sentences); with --sequential its tiers, ranking, three strategy plans and
    ablation block are the same, for fewer token evaluations."""
    common = [
        "run",
        "--model",
        str(standin_dir),
        "--data",
        str(sst2_validation),
        "--store",
        str(tmp_path / "s.sqlite"),
        "--quiet",
    ]
    assert main([*common, "--sequential", "--out", str(tmp_path / "reduced")]) == 0
    assert main([*common, "--out", str(tmp_path / "full")]) == 0
    capsys.readouterr()
    reduced, full = _results(tmp_path / "reduced"), _results(tmp_path / "full")
    assert full["sensitivity"]["sweep"]["mode"] == "exhaustive"
    assert len(full["sensitivity"]["rows"]) == 12 and all(r["n"] == 872 for r in full["sensitivity"]["rows"])
    for key, ranked in full["sensitivity"]["rankings"].items():
        assert [(r["unit"], r["tier"]) for r in reduced["sensitivity"]["rankings"][key]] == [
            (r["unit"], r["tier"]) for r in ranked
        ], key
    assert reduced["ranking"] == full["ranking"]
    assert [(r["plan"], r["formats_by_block"]) for r in reduced["mixed"]["rows"]] == [
        (r["plan"], r["formats_by_block"]) for r in full["mixed"]["rows"]
    ]
    assert reduced["ablation"]["block"] == full["ablation"]["block"]
    sweep = reduced["sensitivity"]["sweep"]
    assert sweep["mode"] == "sequential" and sweep["stopped_early"] >= 1
    assert (
        sweep["token_evaluations"]
        < full["sensitivity"]["sweep"]["token_evaluations"]
        == sweep["full_token_evaluations"]
    )
