"""Write a per-tensor quantization plan as a GGUF file that llama.cpp and transformers load.

The source is a GGUF file (e.g. SmolLM2's Q4_1 release). Every metadata key/value is copied
byte for byte (token lists and merges included, as raw bytes, so no UTF-8 round trip can alter
them) except ``general.file_type`` and ``general.quantization_version``, which are set to describe
the written file. Every tensor is copied: a tensor named in the plan is dequantized from the
source to float32 with ``gguf.quants.dequantize`` and quantized again with
``gguf.quants.quantize`` to the planned type; a tensor not named gets ``default_type`` (``None``
keeps the source bytes untouched). 1-D tensors (norms) always stay F32, as llama.cpp expects.

Tensor byte sizes follow from shapes and types alone (``gguf.GGML_QUANT_SIZES``), so the header
is written first and tensors are then quantized and streamed one at a time: peak memory is one
tensor, and :func:`predicted_gguf_bytes` uses the very formula the writer does.

GGUF keeps attn_q/attn_k rows in llama.cpp's rotary layout (transformers' loader permutes them
back). Row permutation commutes with quantization blocks laid along rows, so quantizing the
GGUF-layout tensor gives exactly the permuted version of quantizing the Hugging Face weight.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from quantsense.errors import QuantsenseError
from quantsense.io import atomic_output, read_mapped_tensor


def gguf_types() -> tuple[str, ...]:
    """The tensor types this writer stores (lower case): the GGUF format family's names, ggml's K/IQ4 names, f32."""
    from quantsense.backends.llama_cpp.ggml_types import names

    return (*names("torch"), *(name.lower() for name in names("ggml")), "f32")


# keys this module sets itself; every other source key is copied unchanged (a source's own imatrix provenance is not:
# it describes how the source was quantized, not this file)
_OWN_KEYS = ("general.architecture", "general.file_type", "general.quantization_version")
_OWN_PREFIXES = ("quantize.imatrix.",)
# llama-quantize's provenance keys for the imatrix a file was quantized with (tools/quantize/quantize.cpp)
IMATRIX_KEYS = {
    "file": "quantize.imatrix.file",
    "dataset": "quantize.imatrix.dataset",
    "entries": "quantize.imatrix.entries_count",
    "chunks": "quantize.imatrix.chunks_count",
}


def _gguf():
    try:
        import gguf
    except ImportError:
        raise QuantsenseError("GGUF export needs the gguf package: pip install -c constraints.txt gguf") from None
    return gguf


def _qtype(name: str):
    if name.lower() not in gguf_types():
        raise QuantsenseError(f"unknown GGUF tensor type {name!r}; use one of {', '.join(gguf_types())}")
    return _gguf().GGMLQuantizationType[name.upper()]


def hf_to_gguf_name(hf_module_name: str, num_blocks: int, arch: str = "llama") -> str:
    """The GGUF tensor name of a Hugging Face module (or parameter), e.g. ``blk.3.attn_q.weight``."""
    gguf = _gguf()
    archs = {name: arch_id for arch_id, name in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in archs:
        raise QuantsenseError(f"unknown GGUF architecture {arch!r}; use a llama.cpp architecture name such as 'llama'")
    key = hf_module_name.removesuffix(".weight")
    name = _tensor_name_map(archs[arch], num_blocks).get_name(key)
    if name is None:
        raise QuantsenseError(
            f"module {hf_module_name!r} has no GGUF tensor name for architecture {arch!r} "
            f"with {num_blocks} blocks; check the module name and block count"
        )
    return name + ".weight"


@functools.lru_cache(maxsize=8)
def _tensor_name_map(arch_id, num_blocks: int):
    """gguf-py's name map of an architecture (built from every known pattern: about 0.1 s, so built once)."""
    return _gguf().get_tensor_name_map(arch_id, num_blocks)


def tensor_nbytes(shape, qtype_name: str) -> int:
    """Bytes of one tensor of ``shape`` (any order) stored as ``qtype_name``; rows must fill whole blocks."""
    gguf = _gguf()
    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype_name.upper()]]
    numel = int(np.prod(shape))
    return numel // block * type_size


def _read(source: Path):
    gguf = _gguf()
    source = Path(source)
    if not source.is_file() or source.suffix != ".gguf":
        raise QuantsenseError(f"{source} is not a .gguf file; pass the GGUF model file to export from")
    return gguf.GGUFReader(source)


def _alignment(reader) -> int:
    field = reader.get_field("general.alignment")
    return int(field.contents()) if field is not None else _gguf().GGUF_DEFAULT_ALIGNMENT


def _target_types(tensors, tensor_types: Mapping[str, str], default_type: str | None) -> dict[str, str]:
    """The written type of every tensor, in source order (a name -> lower-case type name); ``tensors``: (name, GGUF
    shape, stored type name) of each, in file order."""
    names = [name for name, _, _ in tensors]
    unknown = sorted(set(tensor_types) - set(names))
    if unknown:
        raise QuantsenseError(
            f"plan names tensors the GGUF file lacks: {', '.join(unknown[:5])}; "
            "use GGUF tensor names such as blk.0.attn_q.weight (hf_to_gguf_name converts)"
        )
    if default_type is not None:
        _qtype(default_type)
    types = {}
    for name, shape, stored in tensors:
        planned = tensor_types.get(name)
        if len(shape) < 2:
            if planned is not None and planned.lower() != "f32":
                raise QuantsenseError(
                    f"tensor {name} is 1-D; llama.cpp keeps 1-D tensors in F32, remove it from the plan"
                )
            types[name] = "f32"
            continue
        if planned is None and default_type is None:
            types[name] = stored  # kept as the source stores it
            continue
        chosen = planned or default_type
        block = _gguf().GGML_QUANT_SIZES[_qtype(chosen)][0]
        if int(shape[0]) % block:
            raise QuantsenseError(
                f"tensor {name} has rows of {int(shape[0])} values, not a multiple of "
                f"{chosen}'s block of {block}; choose f16/bf16/f32 for it"
            )
        types[name] = chosen.lower()
    return types


def _tensor_list(reader) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    return tuple((t.name, tuple(int(d) for d in t.shape), t.tensor_type.name.lower()) for t in reader.tensors)


@dataclass(frozen=True)
class _Layout:
    """What a size prediction needs of a source file, as plain data (no mapping of the file is kept)."""

    tensors: tuple[tuple[str, tuple[int, ...], str], ...]  # (name, GGUF shape, stored type) in file order
    alignment: int
    data_offset: int
    header_end: int  # where the last metadata or tensor-info field ends
    own_bytes: int | None  # bytes of the source's own imatrix keys; None when it has none


def _layout(source: Path) -> _Layout:
    """The source's layout, read once per file version (a quantize run predicts many plans' sizes from one file)."""
    source = Path(source)
    if not source.is_file() or source.suffix != ".gguf":
        _read(source)  # raises, naming the problem
    stat = source.stat()
    return _layout_of(str(source.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _layout_of(path: str, _mtime_ns: int, _size: int) -> _Layout:
    reader = _read(Path(path))
    fields = [*reader.fields.values(), *(t.field for t in reader.tensors)]
    own = [f for f in reader.fields.values() if f.name.startswith(_OWN_PREFIXES)]
    return _Layout(
        _tensor_list(reader),
        _alignment(reader),
        int(reader.data_offset),
        max(f.offset + _field_bytes(f) for f in fields),
        sum(map(_field_bytes, own)) if own else None,
    )


def predicted_gguf_bytes(
    source: Path,
    tensor_types: Mapping[str, str],
    default_type: str | None = "f32",
    provenance: Mapping[str, Any] | None = None,
) -> dict:
    """Predicted sizes of :func:`write_gguf`'s file from the source's shapes and the planned types.

    Returns ``{"tensor_bytes": sum of tensor data, "file_bytes": header + aligned tensor data}``; the
    header is the source's (the copied metadata and tensor table have the same size), less the source's own imatrix
    keys and plus the ``provenance`` keys written in their place.
    """
    layout = _layout(source)
    types = _target_types(layout.tensors, tensor_types, default_type)
    alignment = layout.alignment
    sizes = [tensor_nbytes(shape, types[name]) for name, shape, _ in layout.tensors]
    padded = sum(-(-size // alignment) * alignment for size in sizes)
    header = layout.data_offset
    if provenance or layout.own_bytes is not None:
        added = sum(_kv_bytes(key, value) for key, value in imatrix_keys(provenance).items())
        header = -(-(layout.header_end - (layout.own_bytes or 0) + added) // alignment) * alignment
    return {"tensor_bytes": sum(sizes), "file_bytes": header + padded}


def imatrix_keys(provenance: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``quantize.imatrix.*`` keys as the llama-quantize tool writes them: strings cut to 127 bytes, counts as
    uint32, the chunk count only when positive."""
    keys = {}
    for name, value in (provenance or {}).items():
        if isinstance(value, str):
            keys[IMATRIX_KEYS[name]] = value.encode()[:127].decode(errors="ignore")
        elif name != "chunks" or value > 0:
            keys[IMATRIX_KEYS[name]] = int(value)
    return keys


def _field_bytes(field) -> int:
    return sum(int(part.nbytes) for part in field.parts)


def _kv_bytes(key: str, value) -> int:
    """A GGUF key/value's bytes: key length (u64) and key, value type (u32), then a string (u64 length and bytes) or
    a uint32."""
    return 8 + len(key.encode()) + 4 + (8 + len(value.encode()) if isinstance(value, str) else 4)


def _field_value(field) -> Any:
    """A reader field's value as GGUFWriter packs it; strings stay raw bytes."""
    gguf = _gguf()
    kind = field.types[0]
    if kind == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]])
    if kind == gguf.GGUFValueType.ARRAY:
        if field.types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]) for i in field.data]
        if field.types[-1] == gguf.GGUFValueType.ARRAY:
            raise QuantsenseError(
                f"metadata key {field.name} is an array of arrays, which gguf's writer cannot copy; "
                "remove it with gguf_new_metadata.py --remove-metadata"
            )
        values = field.contents()
        if not values:
            raise QuantsenseError(
                f"metadata key {field.name} is an empty array, which gguf's writer cannot write; "
                "remove it with gguf_new_metadata.py --remove-metadata"
            )
        return values
    return field.contents()


def _copy_metadata(reader, writer) -> None:
    for field in reader.fields.values():
        if field.name.startswith(("GGUF.", *_OWN_PREFIXES)) or field.name in _OWN_KEYS:
            continue
        sub_type = field.types[-1] if field.types[0] == _gguf().GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, _field_value(field), field.types[0], sub_type=sub_type)


def _file_type(reader, types: Mapping[str, str]) -> int:
    """llama.cpp's ``general.file_type`` for the type holding the most weights of the 2-D tensors.

    A kept source type with no ``MOSTLY_*`` value of its own (k-quants mixes) keeps the source's value.
    """
    gguf = _gguf()
    weights = Counter()
    for tensor in reader.tensors:
        if len(tensor.shape) >= 2:
            weights[types[tensor.name]] += int(tensor.n_elements)
    top = weights.most_common(1)[0][0] if weights else "f32"
    by_name = {
        "f32": gguf.LlamaFileType.ALL_F32,
        **{m.name.removeprefix("MOSTLY_").lower(): m for m in gguf.LlamaFileType},
    }
    if top in by_name:
        return int(by_name[top])
    field = reader.get_field("general.file_type")
    return int(field.contents()) if field is not None else int(gguf.LlamaFileType.GUESSED)


def _tensor_data(tensor, raw: np.ndarray, qtype_name: str, importance: np.ndarray | None = None) -> np.ndarray:
    """The tensor's bytes (``raw``, its data as stored) in ``qtype_name``: dequantized to float32, then quantized with gguf.quants, or by ggml's own
    quantizer for the types gguf.quants cannot write (K, IQ4) and for an imatrix-weighted tensor (``importance``)."""
    gguf = _gguf()
    weights = gguf.quants.dequantize(raw, tensor.tensor_type).astype(np.float32, copy=False)
    if importance is None and qtype_name.lower() in (*_gguf_py_types(), "f32"):
        return gguf.quants.quantize(weights, _qtype(qtype_name))
    from quantsense.backends.llama_cpp import ggml_lib

    rows = weights.reshape(-1, weights.shape[-1])
    data = ggml_lib.quantize(qtype_name, rows, importance)
    return np.frombuffer(data, dtype=np.uint8).reshape(*weights.shape[:-1], -1)


def _gguf_py_types() -> tuple[str, ...]:
    from quantsense.backends.llama_cpp.ggml_types import names

    return names("torch")


def write_gguf(
    source: Path,
    tensor_types: Mapping[str, str],
    out: Path,
    default_type: str | None = "f32",
    importance: Mapping[str, np.ndarray] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict:
    """Write ``source`` (a GGUF file) with ``tensor_types`` (GGUF tensor name -> type) applied to ``out``.

    Tensors not in the plan get ``default_type`` (``None``: keep the source bytes). ``importance`` (GGUF tensor name ->
    per-column imatrix weights) weights those tensors' quantization as ``llama-quantize --imatrix`` does, and
    ``provenance`` (keys of :data:`IMATRIX_KEYS`) writes the imatrix keys llama-quantize writes. The file is
    written to a temporary file beside ``out`` and moved into place, mode 0644. Returns
    ``{"path", "bytes", "tensor_bytes", "types": {type: tensor count}}``.
    """
    importance = importance or {}
    gguf = _gguf()
    reader = _read(source)
    types = _target_types(_tensor_list(reader), tensor_types, default_type)
    keep = {t.name for t in reader.tensors if default_type is None and t.name not in tensor_types and len(t.shape) >= 2}
    out = Path(out)
    arch = bytes(reader.get_field("general.architecture").parts[-1]).decode()
    with atomic_output(out) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        writer.data_alignment = _alignment(reader)
        _copy_metadata(reader, writer)
        writer.add_file_type(_file_type(reader, types))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for key, value in imatrix_keys(provenance).items():
            (writer.add_string if isinstance(value, str) else writer.add_uint32)(key, value)
        for tensor in reader.tensors:
            numpy_shape = tuple(int(d) for d in reversed(tensor.shape))
            if tensor.name in keep:
                writer.add_tensor_info(
                    tensor.name, tensor.data.shape, tensor.data.dtype, int(tensor.n_bytes), tensor.tensor_type
                )
            else:
                writer.add_tensor_info(
                    tensor.name,
                    numpy_shape,
                    np.dtype(np.float32),
                    tensor_nbytes(numpy_shape, types[tensor.name]),
                    _qtype(types[tensor.name]),
                )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        tensor_bytes = 0
        for tensor in reader.tensors:  # read with plain reads, not through the reader's map: see read_mapped_tensor
            raw = read_mapped_tensor(source, tensor)
            data = (
                raw
                if tensor.name in keep
                else _tensor_data(tensor, raw, types[tensor.name], importance.get(tensor.name))
            )
            writer.write_tensor_data(data, tensor_endianess=reader.endianess)
            tensor_bytes += data.nbytes
        writer.close()
    return {
        "path": str(out),
        "bytes": out.stat().st_size,
        "tensor_bytes": tensor_bytes,
        "types": dict(Counter(types.values())),
    }


_LLAMA_QUANTIZE_FLAGS = {"token_embd.weight": "--token-embedding-type", "output.weight": "--output-tensor-type"}


def llama_quantize_args(tensor_types: Mapping[str, str]) -> list[str]:
    """llama-quantize arguments that reproduce the plan, e.g. ``["--tensor-type", "blk.3.ffn_down=q4_0"]``.

    llama-quantize lower-cases the name left of ``=`` and uses it as a regular expression searched
    in each tensor name (``std::regex_search``); ``blk.3.ffn_down`` matches only block 3's
    ffn_down.weight, since the character after a block number is always the literal ``.``.
    Token embedding and output take their own flags (``--token-embedding-type``,
    ``--output-tensor-type``). The overrides apply only to 2-D tensors and when the positional
    base type is quantized; a quantized source also needs ``--allow-requantize``.
    """
    args: list[str] = []
    for name, qtype in tensor_types.items():
        _qtype(qtype)
        if name in _LLAMA_QUANTIZE_FLAGS:
            args += [_LLAMA_QUANTIZE_FLAGS[name], qtype.lower()]
        elif re.fullmatch(r"blk\.\d+\.[a-z_0-9]+\.weight", name):
            args += ["--tensor-type", f"{name.removesuffix('.weight')}={qtype.lower()}"]
        else:
            raise QuantsenseError(
                f"tensor {name!r} is not a per-block weight (blk.N.NAME.weight), token_embd.weight "
                "or output.weight; llama-quantize cannot target it"
            )
    return args


def gguf_tensor_names(
    model, units, purpose: str = "an importance matrix", names: list[str] | None = None
) -> dict[str, str]:
    """Each block linear's (or each of ``names``') llama.cpp tensor name (``blk.0.attn_q.weight``): how an imatrix file
    and llama.cpp's presets name it. A model llama.cpp has no names for is refused, saying what needed them."""
    arch = getattr(model.config, "model_type", "")
    found = {}
    for name in names if names is not None else units.linear_units():
        try:
            found[name] = hf_to_gguf_name(name, units.num_blocks, arch)
        except QuantsenseError:
            raise QuantsenseError(
                f"{purpose} needs llama.cpp's tensor names, and this {arch or type(model).__name__} "
                f"model ({type(model).__name__}) has none for {name}: use a model llama.cpp runs, e.g. "
                "a Llama-architecture causal LM with --task wikitext"
            ) from None
    return found
