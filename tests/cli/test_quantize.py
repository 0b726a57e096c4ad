"""``quantsense quantize``: one command from a model to the shipped GGUF file, on tiny Llamas with SmolLM2's tokenizer
(tied and untied output), and ``--plan-from-gguf`` / the allocator's promise never to return a plan measured worse
than one it was given."""

import json

import gguf
import pytest
import torch
import transformers

from quantsense.cli import main
from quantsense.errors import QuantsenseError
from quantsense.mixed_precision.allocation import Budget
from quantsense.search import better_measured
from tests.conftest import WIKI

CANDIDATES = ["q4_0", "q4_K", "q5_K", "q6_K", "q8_0"]


@pytest.fixture(scope="module", params=["tied", "untied"])
def tiny_llama(request, smollm2, tmp_path_factory):
    """A random 2-layer Llama (hidden 256: every row holds a K super-block) with SmolLM2's tokenizer, saved as a
    Hugging Face directory, its output tied to the token embedding or its own matrix."""
    pytest.importorskip("llama_cpp")
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2.parent, gguf_file=smollm2.name)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=request.param == "tied",
    )
    model = transformers.LlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp(f"llama-{request.param}")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return request.param, path


def _types(path) -> dict[str, str]:
    return {t.name: t.tensor_type.name.lower() for t in gguf.GGUFReader(str(path)).tensors if len(t.shape) >= 2}


def test_quantize_writes_a_file_within_the_preset_size_with_every_tensor_allocated(tiny_llama, tmp_path, capsys):
    tying, model = tiny_llama
    out = tmp_path / "tiny-q4.gguf"
    same_text = ["--calibration-data", str(WIKI)] if tying == "untied" else []  # --data's text: the same ranges
    code = main(
        [
            "quantize",
            str(model),
            str(out),
            "--size-of",
            "Q4_K_M",
            "--data",
            str(WIKI),
            "--context",
            "128",
            "--calibration-tokens",
            "1024",
            "--choose-tokens",
            "1024",
            "--score-tokens",
            "1024",
            *same_text,
            "--candidates",
            *CANDIDATES,
            "--store",
            str(tmp_path / "store.sqlite"),
            "--quiet",
        ]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    report = json.loads(out.with_suffix(".quantsense.json").read_text())
    assert report["ranges"] == {"imatrix": [0, 1024], "choose": [1024, 1024], "score": [2048, 1024]}  # disjoint
    assert out.stat().st_size == report["file_bytes"] <= report["target_bytes"]  # no larger than the preset's file
    sweep = report["sweep"]  # Fisher estimates: every pair predicted, some measured
    assert sweep["estimate"] == "fisher" and 0 < sweep["measured"] < sweep["pairs"]
    preset = report["scores"]["Q4_K_M (llama.cpp)"]
    assert preset["file_bytes"] == report["target_bytes"]  # the size is the preset's own file, written by llama.cpp
    ours = report["scores"][out.name]
    for score in (ours, preset):
        assert 0 < score["kl_ci_low"] <= score["kl_mean"] <= score["kl_ci_high"] < 5
        assert score["kl_mean"] <= score["kl_p99"] and 0 <= score["top1_agreement"] <= 100
        assert score["scored_tokens"] > 900
    # the token embedding (and an untied output) are units of the allocation: the file stores what the plan chose
    plan = {
        unit: spec["format"].lower()
        for unit, spec in json.loads(out.with_suffix(".plan.json").read_text())["units"].items()
    }  # gguf spells types in capitals
    types, candidates = _types(out), {c.lower() for c in CANDIDATES}
    assert types["token_embd.weight"] == plan["model.embed_tokens"] and types["token_embd.weight"] in candidates
    if tying == "untied":
        assert types["output.weight"] == plan["lm_head"] in candidates
    else:
        assert "output.weight" not in types and "lm_head" not in plan
    # the imatrix records the output head's input, under the tensor it multiplies by
    imatrix = {t.name for t in gguf.GGUFReader(str(out.with_suffix(".imatrix.gguf"))).tensors}
    assert ("token_embd.weight.in_sum2" if tying == "tied" else "output.weight.in_sum2") in imatrix
    # the recipe names every quantized tensor with the type it has in the file
    recipe = dict(line.split("=") for line in out.with_suffix(".tensor-types.txt").read_text().split())
    assert recipe and all(types[f"{name}.weight"] == qtype.lower() for name, qtype in recipe.items())
    assert (
        f"Reproduce it with llama.cpp: llama-quantize --pure --imatrix {out.with_suffix('.imatrix.gguf')}"
        in printed.out
    )
    assert "mean KL" in printed.out and "99th-percentile KL" in printed.out
    # the selection measured the allocation beside the preset, and wrote the lower of the two
    selection = {row["plan"]: row["kl_mean"] for row in report["selection"]}
    assert set(selection) == {"allocated", "preset Q4_K_M"}
    assert selection[report["chosen"]] == min(selection.values())


def test_a_gguf_files_types_are_a_plan_and_the_preset_is_read_back(tiny_llama, tmp_path):
    import quantsense as qs
    from quantsense.backends.llama_cpp.gguf_convert import convert_hf_to_gguf
    from quantsense.backends.llama_cpp.llama_quantize import llama_quantize
    from quantsense.backends.llama_cpp.plans import plan_from_gguf
    from quantsense.mixed_precision.presets import preset_plan
    from quantsense.backends.llama_cpp.presets import FTYPES

    _, model = tiny_llama
    ws = qs.open_workspace(
        str(model), data=str(WIKI), task="wikitext", max_tokens=1024, context=128, stride=128, quiet=True
    )
    reference = convert_hf_to_gguf(ws.model, ws.tokenizer, tmp_path / "f32.gguf", name="tiny")
    made = llama_quantize(reference, tmp_path / "q3.gguf", FTYPES["Q3_K_M"], nthread=2)
    read = {unit: fmt.name for unit, fmt in plan_from_gguf(ws, made).assignments}
    assert read == {unit: fmt.name for unit, fmt in preset_plan(ws, "Q3_K_M").assignments}
    assert "model.embed_tokens" in read and len(set(read.values())) >= 3  # q3_K, q4_K, q5_K, q6_K... as llama.cpp chose
    with pytest.raises(QuantsenseError, match="not a .gguf file"):
        plan_from_gguf(ws, tmp_path / "q3.json")


def test_the_allocator_returns_a_given_plan_that_measured_better_within_its_budget():
    rows = [
        {"plan": "allocated@4", "kind": "allocated", "kl_mean": 0.05, "model_mb": 100.0, "avg_bits": 4.0},
        {"plan": "file:a.gguf", "kind": "given", "kl_mean": 0.04, "model_mb": 99.0, "avg_bits": 3.9},
        {"plan": "file:big.gguf", "kind": "given", "kl_mean": 0.01, "model_mb": 120.0, "avg_bits": 4.8},
        {"plan": "preset Q4_K_M", "kind": "preset", "kl_mean": 0.045, "model_mb": 100.0, "avg_bits": 4.0},
        {"plan": "uniform q8_0", "kind": "uniform", "kl_mean": 0.001, "model_mb": 90.0, "avg_bits": 3.0},
    ]
    by_size = better_measured(rows, ["allocated@4"], [Budget(max_bytes=100_000_000)], "kl_mean")
    assert by_size == {"allocated@4": "file:a.gguf"}  # the larger file and the uniform plans are not candidates
    by_bits = better_measured(rows, ["allocated@4"], [Budget(avg_bits=3.95)], "kl_mean")
    assert by_bits == {"allocated@4": "file:a.gguf"}
    rows[0]["kl_mean"] = 0.03  # the allocation measured best: kept
    assert better_measured(rows, ["allocated@4"], [Budget(max_bytes=100_000_000)], "kl_mean") == {}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["m", "out.bin", "--size", "10MB"], "does not end in .gguf"),
        (["m", "{out}", "--size", "10MB", "--imatrix", "a.gguf", "--calibration-data", "b.txt"], "not allowed with"),
        (["m", "{out}", "--size", "10MB", "--size-of", "Q4_K_M"], "not allowed with"),
        (["m", "{out}", "--size", "10MB", "--context", "0"], "--context must be a positive integer"),
        (["m", "{out}", "--size", "10MB", "--context", "1"], "--context 1 is too short"),
        (
            ["m", "{out}", "--size", "10MB", "--score-tokens", "512"],
            "--score-tokens 512 is too few for an interval at --context 1024",
        ),
        (
            ["m", "{out}", "--size", "10MB", "--choose-tokens", "512", "--context", "256"],
            "use --choose-tokens 1024 or more",
        ),
    ],
)
def test_quantize_refuses_a_bad_request_in_one_line(tmp_path, capsys, argv, message):
    argv = [a.replace("{out}", str(tmp_path / "x.gguf")) for a in argv]
    code = main(["quantize", *argv, "--data", str(WIKI)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "x.gguf").exists()


def test_quantize_never_overwrites_the_imatrix_it_would_write_and_makes_the_output_folder(tmp_path, capsys):
    pytest.importorskip("llama_cpp")
    (tmp_path / "x.imatrix.gguf").write_bytes(b"mine")
    code = main(["quantize", "m", str(tmp_path / "x.gguf"), "--size", "10MB", "--data", str(WIKI)])
    assert code == 2 and "x.imatrix.gguf already exists" in capsys.readouterr().err
    assert (tmp_path / "x.imatrix.gguf").read_bytes() == b"mine"
    code = main(["quantize", "no-such-model", str(tmp_path / "new" / "x.gguf"), "--size", "10MB", "--data", str(WIKI)])
    assert code == 2 and (tmp_path / "new").is_dir()  # refused for the model, after the folder was made for the file
