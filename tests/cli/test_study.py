"""The reference study end to end on the real stand-in model (../shared/assets)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from quantsense.cli import main
from tests.conftest import REPO


def test_fp32_baseline_is_89_45_percent_on_full_validation(standin_dir, sst2_validation, capsys):
    code = main(["baseline", "--model", str(standin_dir), "--data", str(sst2_validation), "--no-store", "--quiet"])
    assert code == 0
    assert "FP32 accuracy: 89.45 % (780/872)" in capsys.readouterr().out


def test_run_writes_the_full_results_folder(standin_dir, sst2_validation, tmp_path, capsys):
    out = tmp_path / "out"
    args = [
        "run",
        "--model",
        str(standin_dir),
        "--data",
        str(sst2_validation),
        "--limit",
        "96",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    for name in (
        "results.json",
        "sensitivity.csv",
        "rankings.csv",
        "mixed.csv",
        "ablation.csv",
        "sensitivity.png",
        "heatmap.png",
        "summary.md",
        "report.html",
    ):
        assert (out / name).stat().st_size > 0, name
        assert (out / name).stat().st_mode & 0o777 == 0o644, name  # readable by others
    results = json.loads((out / "results.json").read_text())
    assert results["workspace"]["data"]["examples"] == 96
    assert set(results["provenance"]["versions"]) >= {"torch", "transformers", "quantsense"}
    rows = results["sensitivity"]["rows"]
    assert len(rows) == 12  # 6 blocks x bits 8, 4
    for row in rows:
        assert row["drop_ci_low"] <= row["drop"] <= row["drop_ci_high"]
        assert 0 <= row["mcnemar_p"] <= 1
        assert row["kl_mean"] >= 0
    int8 = [r for r in rows if r["format"] == "int8"]
    int4 = [r for r in rows if r["format"] == "int4"]
    assert max(r["kl_mean"] for r in int8) < min(r["kl_mean"] for r in int4)  # INT8 is much gentler
    assert all(r["weight_sqnr_db"] > 35 for r in int8) and all(12 < r["weight_sqnr_db"] < 25 for r in int4)
    assert {r["plan"] for r in results["mixed"]["rows"]} == {
        "aggressive_int6_int4",
        "int8_selective_int4",
        "targeted_single_block",
    }
    assert 4.0 < min(r["avg_bits"] for r in results["mixed"]["rows"]) < 8.5
    capsys.readouterr()
    # the second identical run comes entirely from the store
    assert main(args) == 0
    assert "All" in capsys.readouterr().out


def test_experiments_entry_points_take_the_same_flags(standin_dir, sst2_validation, tmp_path):
    common = [
        "--model",
        str(standin_dir),
        "--data",
        str(sst2_validation),
        "--limit",
        "48",
        "--quiet",
        "--store",
        str(tmp_path / "s.sqlite"),
    ]
    for module, expect in [
        ("baseline_eval", "FP32 accuracy"),
        ("layer_sensitivity", "Ranking only@int4"),
        ("mixed_precision_eval", "aggressive_int6_int4"),
        ("ablation_study", "Ablation: only block"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", f"experiments.{module}", *common],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert expect in proc.stdout, module


def test_fake_quant_block_matches_torchao_real_quantization(standin_dir, sst2_validation):
    """An independent implementation: torchao's IntxWeightOnlyConfig(PerAxis(0)) on one block."""
    pytest.importorskip("torchao")
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis

    from quantsense.config import Plan, QuantConfig
    from quantsense.workspace import open_workspace

    ws = open_workspace(str(standin_dir), data=str(sst2_validation), limit=300, device="cpu", quiet=True)
    block = 2
    for bits in (8, 4):
        plan = Plan.of({n: QuantConfig(bits) for n in ws.units.block_units(block)})
        ours = ws.evaluator.evaluate(plan).logits
        import copy

        model = copy.deepcopy(ws.model)
        names = set(ws.units.block_units(block))
        quantize_(
            model,
            IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{bits}"), granularity=PerAxis(0)),
            filter_fn=lambda m, fqn: fqn in names,
        )
        theirs = np.empty_like(ours)
        with torch.inference_mode():
            for batch in ws.batches:
                theirs[batch.index] = model(**batch.inputs).logits.numpy()
        assert not np.allclose(theirs, ws.reference().logits)  # torchao really quantized
        assert np.abs(ours - theirs).max() < 1e-4
        assert (ours.argmax(1) == theirs.argmax(1)).all()
