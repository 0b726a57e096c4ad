"""Export a plan as ONNX, run it with ONNX Runtime in a fresh process, compare with the simulation."""

import json

import pytest

from quantsense.cli import main

pytest.importorskip("onnxruntime")


def _figure(printed: str, before: str, after: str) -> str:
    return printed.split(before)[1].split(after)[0]


def test_onnx_export_matches_simulation_size_and_operators(standin_dir, sst2_validation, tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "units": {"bert.embeddings.word_embeddings": {"format": "ort-int8"}},
                "blocks": {
                    "0": {"format": "ort-int8"},
                    "1": {"format": "ort-int4-b32"},
                    "3": {"format": "ort-int8-tensor"},
                    "4": {"format": "ort-int4"},
                    "5": {"format": "ort-int8"},
                },
            }
        )
    )
    out = tmp_path / "onnx"
    args = [
        "export",
        str(plan),
        "--format",
        "onnx",
        "--model",
        str(standin_dir),
        "--data",
        str(sst2_validation),
        "--limit",
        "200",
        "--out",
        str(out),
        "--no-store",
        "--quiet",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "quantsense imported: False" in printed
    assert "18 MatMulInteger" in printed and "12 MatMulNBits" in printed and "1 DequantizeLinear" in printed
    differ = int(_figure(printed, "simulated ", " predictions differ").split(", ")[1].split(" of ")[0])
    from quantsense.backends.onnxruntime.ort_lib import SATURATION_NOTE, int8_kernel_saturates

    if not int8_kernel_saturates():
        assert (
            differ <= 1
        )  # activation codes at rounding ties may flip where ONNX Runtime's float kernels differ in the last bit
        assert float(_figure(printed, "largest logit difference ", " (")) < 0.5
        assert SATURATION_NOTE not in printed
    else:  # x86 without VNNI: ONNX Runtime's int16 pair sums saturate here, and the check says so beside the figures
        assert SATURATION_NOTE in printed and differ <= 10
    on_disk = float(_figure(printed, "model.onnx: ", " MB on disk"))
    predicted = float(_figure(printed, "predicted ", " MB of parameters"))
    assert on_disk == pytest.approx(predicted, rel=0.03)
    assert on_disk == pytest.approx((out / "model.onnx").stat().st_size / 1e6, abs=0.01)
    assert float(_figure(printed, "this one is ", " of it")) < 0.4
    assert {"model.onnx", "quantsense_plan.json", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()
    }


def test_onnx_export_refuses_formats_it_cannot_write(standin_dir, sst2_validation, tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"blocks": {"0": {"bits": 4}}}))
    args = [
        "export",
        str(plan),
        "--format",
        "onnx",
        "--model",
        str(standin_dir),
        "--data",
        str(sst2_validation),
        "--limit",
        "50",
        "--out",
        str(tmp_path / "out"),
        "--no-store",
        "--quiet",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "int4" in err and "onnx export cannot write" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
    plan.write_text(json.dumps({"units": {"bert.embeddings.word_embeddings": {"format": "ort-int4"}}}))
    assert main(args) == 2
    assert "plan ort-int8 for an embedding" in capsys.readouterr().err
    plan.write_text(json.dumps({"units": {"classifier": {"format": "ort-int8"}}}))
    assert main(args) == 2
    assert "classifier head" in capsys.readouterr().err
    plan.write_text(json.dumps({"blocks": {"0": {"format": "ort-int8"}}}))
    assert main([*args, "--embedding", "ort-int8"]) == 2
    assert "drop --embedding" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_embedding_flag_quantizes_the_table_in_every_measured_plan(standin_dir, sst2_validation, tmp_path, capsys):
    common = ["--model", str(standin_dir), "--data", str(sst2_validation), "--limit", "100", "--no-store", "--quiet"]
    assert main(["ablation", "--format", "ort-int8", "--block", "2", "--out", str(tmp_path / "a"), *common]) == 0
    plain = json.loads((tmp_path / "a" / "results.json").read_text())["ablation"]
    assert (
        main(
            [
                "ablation",
                "--format",
                "ort-int8",
                "--block",
                "2",
                "--embedding",
                "ort-int8",
                "--out",
                str(tmp_path / "b"),
                *common,
            ]
        )
        == 0
    )
    with_table = json.loads((tmp_path / "b" / "results.json").read_text())["ablation"]
    # the 30522 x 384 table at 8 bits instead of 32: 35 MB smaller, and counted in the plan's formats
    assert plain["model_mb"] - with_table["model_mb"] == pytest.approx(30522 * 384 * 3 / 1e6, rel=0.01)
    assert with_table["formats"] == {"ort-int8": 7}
    capsys.readouterr()
    assert main(["ablation", "--format", "ort-int8", "--block", "2", "--embedding", "ort-int4", *common]) == 2
    assert "plan ort-int8 for an embedding" in capsys.readouterr().err


def test_the_strategies_are_written_as_plans_ready_to_export(standin_dir, sst2_validation, tmp_path):
    out = tmp_path / "mixed"
    assert (
        main(
            [
                "mixed",
                "--rank-format",
                "ort-int4",
                "--embedding",
                "ort-int8",
                "--model",
                str(standin_dir),
                "--data",
                str(sst2_validation),
                "--limit",
                "100",
                "--no-store",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = {r["plan"]: r for r in json.loads((out / "results.json").read_text())["mixed"]["rows"]}
    plans = {p.stem: json.loads(p.read_text()) for p in (out / "plans").glob("*.json")}
    assert set(plans) == set(rows) and len(plans) == 3
    for name, plan in plans.items():  # as measured: the table's format counts, the embedding included
        counts = {}
        for entry in plan["units"].values():
            counts[entry["format"]] = counts.get(entry["format"], 0) + 1
        assert counts == rows[name]["formats"]
        assert plan["units"]["bert.embeddings.word_embeddings"] == {"format": "ort-int8"}
