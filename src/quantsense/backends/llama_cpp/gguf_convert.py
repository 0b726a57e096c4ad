"""A Hugging Face Llama-architecture model (in memory) written as a GGUF file llama.cpp loads.

This is the part of llama.cpp's ``convert_hf_to_gguf.py`` that Llama-family models with a GPT-2
style byte-level BPE tokenizer need (SmolLM2, Llama 3, ...): the hyper-parameters as ``llama.*``
keys, the vocabulary, merges and special tokens as ``tokenizer.*`` keys, and every weight under its
GGUF name, with attn_q/attn_k rows permuted into llama.cpp's rotary layout (the inverse of what
transformers' GGUF loader undoes). Weights are written in the model's own dtype (float32 -> F32,
bfloat16 -> BF16, float16 -> F16; a model streamed from bf16 files: BF16, the same values), so the file holds exactly
the weights the simulation measured, read and written one tensor at a time;
:func:`quantsense.backends.llama_cpp.gguf_file.write_gguf` then quantizes the planned tensors from it.

What this converter does not map is refused in one line naming the llama.cpp converter as the fix:
other architectures, rope scaling, biases, SentencePiece tokenizers, unknown pre-tokenizers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from quantsense.errors import QuantsenseError
from quantsense.io import atomic_output
from quantsense.backends.llama_cpp.gguf_file import _gguf, hf_to_gguf_name

_FIX = "convert it with llama.cpp's convert_hf_to_gguf.py and pass the .gguf file with --model"
# llama.cpp's general.file_type for the model's dtype: ALL_F32, MOSTLY_F16, MOSTLY_BF16
_FILE_TYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 32}
_GGUF_DTYPES = {torch.float32: ("F32", np.float32), torch.float16: ("F16", np.float16)}
# llama.cpp's pre-tokenizer names for the byte-level pre-tokenizers of Llama-family tokenizer.json files
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


def _refuse(what: str) -> QuantsenseError:
    return QuantsenseError(f"GGUF export from a Hugging Face model: {what}; {_FIX}")


def check_config(config) -> None:
    """Refuse, naming the fix, what this converter does not map."""
    if getattr(config, "model_type", None) != "llama":
        raise _refuse(f"model type {getattr(config, 'model_type', None)!r} is not mapped (only 'llama')")
    rope_type = _rope(config).get("rope_type", _rope(config).get("type", "default"))
    if rope_type != "default":
        raise _refuse(f"rope type {rope_type!r} is not mapped (only the default rotary embedding)")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise _refuse("linear biases are not mapped")


def _rope(config) -> dict:
    """The rotary settings (newer transformers keep rope_theta in ``rope_parameters``)."""
    return dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def add_hparams(writer, config, name: str) -> None:
    """The ``general.*`` and ``llama.*`` keys llama.cpp reads for a Llama model."""
    writer.add_name(name)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_rope_freq_base(float(_rope(config).get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(_head_dim(config))


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for a byte-level BPE ``tokenizer.json`` (gpt-2, smollm, llama-bpe)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if tokenizer_json.get("normalizer") is None and kinds[-1:] == ["ByteLevel"]:
        byte_level = steps[-1]
        if kinds == ["ByteLevel"] and byte_level.get("use_regex", True):
            return "gpt-2"
        if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and byte_level.get("use_regex", True):
            return "smollm"
        if (
            kinds == ["Split", "ByteLevel"]
            and steps[0].get("pattern", {}).get("Regex") == _LLAMA3_SPLIT
            and not byte_level.get("use_regex", True)
        ):
            return "llama-bpe"
    raise _refuse(
        f"its tokenizer's pre-tokenizer ({' + '.join(map(str, kinds))}) is not one of gpt-2, smollm, llama-bpe"
    )


def tokenizer_spec(tokenizer) -> dict:
    """The tokenizer.json of a fast byte-level BPE tokenizer (llama.cpp's ``gpt2`` tokenizer model), checked."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise _refuse("its tokenizer is not a fast (tokenizer.json) tokenizer")
    spec = json.loads(backend.to_str())
    if (
        spec["model"]["type"] != "BPE"
        or spec["model"].get("byte_fallback")
        or (spec.get("decoder") or {}).get("type") != "ByteLevel"
    ):
        raise _refuse("its tokenizer is not a byte-level BPE tokenizer (SentencePiece tokenizers are not mapped)")
    pre_tokenizer_name(spec)
    return spec


def check_convertible(model, tokenizer) -> None:
    """Everything :func:`convert_hf_to_gguf` checks, without writing anything."""
    check_config(model.config)
    dtype = model.get_input_embeddings().weight.dtype
    if dtype not in _FILE_TYPES:
        raise _refuse(f"weights of dtype {dtype} are not mapped (float32, float16, bfloat16 are)")
    tokenizer_spec(tokenizer)


def add_vocab(writer, tokenizer, vocab_size: int) -> None:
    """Tokens, token types, merges and special tokens of a fast byte-level BPE tokenizer."""
    gguf = _gguf()
    spec = tokenizer_spec(tokenizer)
    by_id = {i: text for text, i in tokenizer.get_vocab().items()}
    added = dict(tokenizer.added_tokens_decoder)

    def entry(i: int):  # (text, type) as llama.cpp's converter writes them
        if i not in by_id:
            return f"[PAD{i}]", gguf.TokenType.UNUSED
        if i in added:
            return by_id[i], gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
        return by_id[i], gguf.TokenType.NORMAL

    tokens, types = zip(*(entry(i) for i in range(vocab_size)))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(spec))
    writer.add_token_list(list(tokens))
    writer.add_token_types(list(types))
    merges = spec["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(int(token_id))
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def _rotary_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's row order for attn_q/attn_k: each head's two rotary halves interleaved (convert_hf_to_gguf's permute)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def gguf_tensors(model):
    """(GGUF name, a callable that reads the weight in GGUF row layout) for every parameter, in the model's order; a
    tied lm_head is left out. A streamed block's weight (:mod:`quantsense.models.streaming`) is read from the model's
    files only when called, so a conversion holds one tensor at a time."""
    config = model.config
    heads, kv_heads = (
        config.num_attention_heads,
        getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
    )
    stream = getattr(model, "quantsense_stream", None)
    out = []
    for name, weight in model.state_dict().items():
        if name == "lm_head.weight" and getattr(config, "tie_word_embeddings", False):
            continue  # llama.cpp reads the output matrix from token_embd when output.weight is absent
        rows = heads if name.endswith("self_attn.q_proj.weight") else None
        rows = kv_heads if name.endswith("self_attn.k_proj.weight") else rows
        stored = _stored_dtype(stream, name, weight)

        def read(name=name, weight=weight, rows=rows, stored=stored):
            value = (stream.parameter(name) if weight.is_meta else weight).to(stored)
            return _rotary_rows(value, rows) if rows is not None else value

        layout = torch.empty(weight.shape, dtype=stored, device="meta")
        out.append((hf_to_gguf_name(name, config.num_hidden_layers), layout, read))
    return out


def converted_dtype(model, tensors=None) -> torch.dtype:
    """The dtype :func:`convert_hf_to_gguf` writes ``model``'s matrices in, and names the file's type by (``tensors``:
    :func:`gguf_tensors` of the model, when the caller has them)."""
    return next(w.dtype for _, w, _ in (tensors or gguf_tensors(model)) if w.dim() == 2)


def _stored_dtype(stream, name: str, weight: torch.Tensor) -> torch.dtype:
    """The dtype a weight is written in: the model's own, or, for a model streamed from its files, the files' narrower
    float dtype (the compute dtype's values are that dtype's, cast exactly: a bf16 checkpoint computed in float32
    converts to a BF16 GGUF, half the size, with the same values)."""
    if stream is None or not weight.is_floating_point():
        return weight.dtype
    stored = stream.source.stored_dtype(name)
    return stored if torch.finfo(stored).bits < torch.finfo(weight.dtype).bits else weight.dtype


def _layout(weight: torch.Tensor) -> tuple[str, tuple[int, ...], np.dtype, int]:
    """(GGUF type name, numpy shape, numpy dtype, bytes) that :func:`_numpy` gives ``weight`` (from its shape alone)."""
    if weight.dim() < 2:
        return "F32", tuple(weight.shape), np.dtype(np.float32), 4 * weight.numel()
    if weight.dtype == torch.bfloat16:
        return "BF16", tuple(weight.shape), np.dtype(np.uint16), 2 * weight.numel()
    gguf_type, np_type = _GGUF_DTYPES[weight.dtype]
    return gguf_type, tuple(weight.shape), np.dtype(np_type), np.dtype(np_type).itemsize * weight.numel()


def _numpy(weight: torch.Tensor):
    """(GGUF type name, array) of a weight in its own dtype; 1-D tensors in F32 as llama.cpp expects."""
    weight = weight.detach().cpu()
    if weight.dim() < 2:
        return "F32", weight.float().numpy()
    if weight.dtype == torch.bfloat16:  # numpy has no bfloat16: the raw 16-bit patterns, as gguf's writer stores them
        return "BF16", weight.view(torch.int16).numpy().view(np.uint16)
    gguf_type, np_type = _GGUF_DTYPES[weight.dtype]
    return gguf_type, weight.numpy().astype(np_type, copy=False)


def convert_hf_to_gguf(model, tokenizer, out: Path, name: str) -> Path:
    """Write ``model`` and ``tokenizer`` as a GGUF file at ``out`` (mode 0644, written beside it then moved)."""
    gguf = _gguf()
    check_convertible(model, tokenizer)
    with atomic_output(out) as tmp:
        writer = gguf.GGUFWriter(tmp, "llama")
        add_hparams(writer, model.config, name)
        add_vocab(writer, tokenizer, model.config.vocab_size)
        tensors = gguf_tensors(model)
        for gguf_name, weight, _ in tensors:  # the table of contents first, from shapes alone
            gguf_type, shape, dtype, nbytes = _layout(weight)
            writer.add_tensor_info(gguf_name, shape, dtype, nbytes, raw_dtype=gguf.GGMLQuantizationType[gguf_type])
        writer.add_file_type(_FILE_TYPES[converted_dtype(model, tensors)])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _, _, read in tensors:  # then each tensor's data, read (a streamed block's: from its file) one at a time
            writer.write_tensor_data(_numpy(read())[1])
        writer.close()
    return Path(out)
