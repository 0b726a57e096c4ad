"""A Hugging Face Llama model written as GGUF: the same tensors, vocabulary and hyper-parameters as llama.cpp's own file."""

import importlib.util

import numpy as np
import pytest
import torch
import transformers

from quantsense.errors import QuantsenseError
from quantsense.backends.llama_cpp.gguf_convert import check_convertible, convert_hf_to_gguf, pre_tokenizer_name
from tests.conftest import WIKI, tiny_tokenizer

gguf = pytest.importorskip("gguf")

# the keys a converter writes itself (the source's descriptive general.* keys are not carried by a HF directory)
SKIPPED_KEYS = ("GGUF.", "general.")


@pytest.fixture(scope="module")
def converted(smollm2, smollm2_hf, tmp_path_factory):
    model = transformers.AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_hf)
    return convert_hf_to_gguf(model, tokenizer, tmp_path_factory.mktemp("convert") / "smollm2-f32.gguf", "smollm2")


def test_every_tensor_equals_the_published_gguf(smollm2, converted):
    """De-quantized Q4_1 -> transformers (which un-permutes q/k) -> our converter (permutes back): bit for bit the same."""
    source, ours = gguf.GGUFReader(smollm2), gguf.GGUFReader(converted)
    mine = {t.name: t for t in ours.tensors}
    assert sorted(mine) == sorted(t.name for t in source.tensors)
    for a in source.tensors:
        b = mine[a.name]
        assert list(a.shape) == list(b.shape), a.name
        expected = gguf.quants.dequantize(a.data, a.tensor_type)
        assert b.tensor_type == gguf.GGMLQuantizationType.F32
        assert np.array_equal(np.asarray(b.data).reshape(expected.shape), expected), a.name


def test_hyper_parameters_and_vocabulary_equal_the_published_gguf(smollm2, converted):
    source, ours = gguf.GGUFReader(smollm2), gguf.GGUFReader(converted)
    differing = {}
    for name, field in source.fields.items():
        if name.startswith(SKIPPED_KEYS) or name in ("tokenizer.ggml.add_space_prefix", "tokenizer.ggml.pre"):
            continue
        mine = ours.get_field(name)
        if mine is None or mine.contents() != field.contents():
            differing[name] = None if mine is None else mine.contents()
    assert differing == {}
    assert len(ours.get_field("tokenizer.ggml.tokens").contents()) == 49152
    assert ours.get_field("general.file_type").contents() == gguf.LlamaFileType.ALL_F32
    # this directory's tokenizer.json (written by transformers' GGUF loader) pre-tokenizes with plain GPT-2 byte level
    assert ours.get_field("tokenizer.ggml.pre").contents() == "gpt-2"


def test_llama_cpp_tokenizes_like_the_hf_tokenizer(smollm2_hf, converted):
    llama_cpp = pytest.importorskip("llama_cpp")
    text = WIKI.read_text(encoding="utf-8")[:4000]
    expected = transformers.AutoTokenizer.from_pretrained(smollm2_hf)(text, add_special_tokens=False).input_ids
    llm = llama_cpp.Llama(str(converted), vocab_only=True, verbose=False)
    assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) == expected


def test_bfloat16_weights_are_written_as_bf16_bit_for_bit(smollm2_hf, tmp_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_hf)
    config = transformers.LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    out = convert_hf_to_gguf(model, tokenizer, tmp_path / "tiny-bf16.gguf", "tiny")
    reader = gguf.GGUFReader(out)
    tensors = {t.name: t for t in reader.tensors}
    down = tensors["blk.1.ffn_down.weight"]
    assert down.tensor_type == gguf.GGMLQuantizationType.BF16
    expected = model.model.layers[1].mlp.down_proj.weight.detach().view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(np.asarray(down.data).view(np.uint16).reshape(expected.shape), expected)
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert "output.weight" in tensors  # untied: llama.cpp needs the output matrix
    assert reader.get_field("general.file_type").contents() == gguf.LlamaFileType.MOSTLY_BF16
    if importlib.util.find_spec("llama_cpp"):  # llama.cpp loads it and computes finite logits
        import llama_cpp

        llm = llama_cpp.Llama(str(out), n_ctx=32, logits_all=True, verbose=False)
        llm.eval([1, 2, 3])
        assert np.isfinite(np.asarray(llm.scores[:3])).all()


def test_pre_tokenizer_names():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert pre_tokenizer_name({"normalizer": None, "pre_tokenizer": byte_level}) == "gpt-2"
    digits = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    assert pre_tokenizer_name({"normalizer": None, "pre_tokenizer": digits}) == "smollm"
    with pytest.raises(
        QuantsenseError,
        match=r"pre-tokenizer \(Whitespace\) is not one of gpt-2, smollm, llama-bpe; "
        r"convert it with llama.cpp's convert_hf_to_gguf.py",
    ):
        pre_tokenizer_name({"normalizer": None, "pre_tokenizer": {"type": "Whitespace"}})


def test_what_is_not_mapped_is_refused(smollm2_hf):
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_hf)
    config = transformers.LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    check_convertible(transformers.LlamaForCausalLM(config), tokenizer)
    with pytest.raises(QuantsenseError, match="not a byte-level BPE tokenizer"):
        check_convertible(transformers.LlamaForCausalLM(config), tiny_tokenizer())
    biased = transformers.LlamaConfig(**{**config.to_dict(), "attention_bias": True})
    with pytest.raises(QuantsenseError, match="linear biases are not mapped"):
        check_convertible(transformers.LlamaForCausalLM(biased), tokenizer)
    bert = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    with pytest.raises(QuantsenseError, match="model type 'bert' is not mapped"):
        check_convertible(transformers.BertModel(bert), tokenizer)
