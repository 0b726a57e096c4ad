"""Weights that stay on disk until their block runs: models larger than memory, one block resident at a time.

A streamed model is built on PyTorch's ``meta`` device (shapes, no storage). Everything outside the transformer blocks
(the token embedding, the final norm, the output head, buffers) is read once and stays resident; every block parameter
stays in its file: a :class:`WeightSource` reads it (memory-mapped safetensors, or a GGUF tensor de-quantized as
transformers de-quantizes it) in the compute dtype when the block's forward starts, and the block drops it when its
forward returns. Peak memory is then the resident part, about one block, and the engine's capped caches.

The tensors a block computes with are the same bytes an eager load gives (the same file, the same cast), so outputs,
store keys (:func:`quantsense.models.loading.weights_fingerprint`) and every figure are identical; a plan's quantized
weights replace the file's while it is applied (:attr:`StreamedBlocks.overrides`, set by
:class:`quantsense.quantization.apply.PlanApplier`), and a block the prefix cache replays is not read at all.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from quantsense.errors import QuantsenseError

STREAM_MODES = ("auto", "on", "off")
CAST_CHUNK = 1 << 24  # elements read and cast at a time: no whole copy of a large tensor in its file's dtype
_SAFETENSORS_FLOATS = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
AUTO_SHARE = 0.5  # ``--stream-blocks auto`` streams a model whose weights would take more than this share of memory


class WeightSource:
    """Tensors by Hugging Face parameter name, read one at a time (the file stays memory-mapped)."""

    def keys(self) -> set[str]:
        raise NotImplementedError

    def read(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError

    def stored_dtype(self, name: str) -> torch.dtype:
        """The dtype the file holds tensor ``name`` in (float32 where it is quantized, as in a GGUF)."""
        return torch.float32


class SafetensorsSource(WeightSource):
    """A Hugging Face model folder's ``*.safetensors`` (one file, or shards with ``model.safetensors.index.json``)."""

    def __init__(self, folder: Path):
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {name: folder / shard for name, shard in weight_map.items()}
        else:
            from safetensors import safe_open

            self.files = {}
            for path in sorted(folder.glob("*.safetensors")):
                with safe_open(str(path), framework="pt") as f:
                    self.files.update({name: path for name in f.keys()})

    def keys(self) -> set[str]:
        return set(self.files)

    def read(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        from safetensors import safe_open

        # opened for each read and closed after: a mapping kept open would keep every page read so far in the process
        with safe_open(str(self.files[name]), framework="pt") as f:
            part = f.get_slice(name)
            shape = part.get_shape()
            stored = _SAFETENSORS_FLOATS.get(part.get_dtype())
            if stored is None or stored == dtype or len(shape) < 2 or math.prod(shape) < CAST_CHUNK:
                tensor = f.get_tensor(name)
                return tensor.to(dtype) if tensor.is_floating_point() else tensor.clone()
            out = torch.empty(shape, dtype=dtype)  # cast a few rows at a time: no whole copy in the file's dtype
            step = max(1, CAST_CHUNK // math.prod(shape[1:]))
            for start in range(0, shape[0], step):
                out[start : start + step] = part[start : start + step].to(dtype)
            return out

    def stored_dtype(self, name: str) -> torch.dtype:
        from safetensors import safe_open

        with safe_open(str(self.files[name]), framework="pt") as f:
            code = f.get_slice(name).get_dtype()
        return _SAFETENSORS_FLOATS.get(code, torch.float32)


class GGUFSource(WeightSource):
    """A GGUF file's tensors under their Hugging Face names, each de-quantized (and, for attn_q/attn_k, given back
    transformers' row order) exactly as transformers' own GGUF loader does it, then cast to the compute dtype."""

    def __init__(self, path: Path, model: nn.Module):
        from gguf import GGUFReader
        from transformers.modeling_gguf_pytorch_utils import (
            TENSOR_PROCESSORS,
            TensorProcessor,
            get_gguf_hf_weights_map,
            load_gguf_checkpoint,
        )

        parsed = load_gguf_checkpoint(str(path), return_tensors=False)
        self.path = path
        self.reader = GGUFReader(str(path))  # the tensors' offsets, shapes and types (the data is read per tensor)
        architecture = self.reader.fields["general.architecture"].contents()
        self.processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=parsed["config"])
        self.mapping = get_gguf_hf_weights_map(model, self.processor)
        self.parsed = parsed
        self.tensors = {self.mapping[t.name]: t for t in self.reader.tensors if t.name in self.mapping}

    def keys(self) -> set[str]:
        return set(self.tensors)

    def read(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        import numpy as np
        from gguf import dequantize

        tensor = self.tensors[name]
        if self._by_rows(tensor):
            return self._rows(tensor, dtype)
        result = self.processor.process(
            weights=dequantize(self._bytes(tensor), tensor.tensor_type),
            name=tensor.name,
            tensor_key_mapping=self.mapping,
            parsed_parameters=self.parsed,
        )
        return torch.from_numpy(np.ascontiguousarray(result.weights)).to(torch.float32).to(dtype)

    def _by_rows(self, tensor) -> bool:
        """A large tensor the processor leaves as it is (not a Llama attn_q/attn_k): de-quantized a few rows at a time."""
        from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor, TensorProcessor

        plain = type(self.processor) in (TensorProcessor, LlamaTensorProcessor)
        rotary = ".attn_q." in tensor.name or ".attn_k." in tensor.name
        return plain and not rotary and tensor.data.ndim == 2 and int(tensor.n_elements) >= CAST_CHUNK

    def _rows(self, tensor, dtype: torch.dtype) -> torch.Tensor:
        import os

        import numpy as np
        from gguf import dequantize

        like = tensor.data
        rows, row_bytes = like.shape[0], int(tensor.n_bytes) // like.shape[0]
        step = max(1, CAST_CHUNK * rows // int(tensor.n_elements))
        out = None
        with open(self.path, "rb") as f:
            for start in range(0, rows, step):
                n = min(step, rows - start)
                raw = os.pread(f.fileno(), n * row_bytes, int(tensor.data_offset) + start * row_bytes)
                part = dequantize(np.frombuffer(raw, dtype=like.dtype).reshape(n, *like.shape[1:]), tensor.tensor_type)
                if out is None:
                    out = torch.empty((rows, *part.shape[1:]), dtype=dtype)
                out[start : start + n] = torch.from_numpy(part).to(torch.float32).to(dtype)
        return out

    def _bytes(self, tensor):
        from quantsense.io import read_mapped_tensor

        return read_mapped_tensor(self.path, tensor)


class StreamedBlocks:
    """Reads each block's parameters from ``source`` when its forward starts and drops them when it returns.

    ``overrides`` (module name -> a callable giving the weight) replaces a module's weight from the file while a plan
    is applied: called when the block runs, so a plan over every block never holds every quantized weight at once.
    ``reads`` counts the block loads (for benchmarks)."""

    def __init__(self, prefix: str, blocks: list[nn.Module], source: WeightSource, dtype, device):
        self.prefix, self.blocks, self.source, self.dtype, self.device = prefix, blocks, source, dtype, device
        self.overrides: dict[str, Callable[[], torch.Tensor]] = {}
        self.reads = 0
        self._params: list[list[tuple[nn.Module, str, str, str]]] = []  # per block: (module, attribute, key, owner)
        for j, block in enumerate(blocks):
            entries = []
            for owner, module in block.named_modules(prefix=f"{prefix}.{j}"):
                for attribute, param in module.named_parameters(recurse=False):
                    entries.append((module, attribute, f"{owner}.{attribute}", owner))
            self._params.append(entries)
            block.register_forward_pre_hook(lambda module, args, j=j: self.load(j))
            block.register_forward_hook(lambda module, args, output, j=j: self.release(j))

    def streams(self, module_name: str) -> bool:
        """Whether module ``module_name`` lives in a streamed block."""
        return module_name.startswith(f"{self.prefix}.")

    def weight(self, module_name: str) -> torch.Tensor:
        """Module ``module_name``'s weight as the file holds it, in the compute dtype, on the device."""
        return self.source.read(f"{module_name}.weight", self.dtype).to(self.device)

    def parameter(self, key: str) -> torch.Tensor:
        """Parameter ``key`` (a state_dict key) as the file holds it, in the compute dtype (on the CPU)."""
        return self.source.read(key, self.dtype)

    @torch.no_grad()
    def load(self, j: int) -> None:
        if "forward" in self.blocks[j].__dict__:
            return  # replayed from the prefix cache: the block computes nothing
        self.reads += 1
        for module, attribute, key, owner in self._params[j]:
            override = self.overrides.get(owner) if attribute == "weight" else None
            value = override() if override is not None else self.source.read(key, self.dtype).to(self.device)
            module._parameters[attribute] = nn.Parameter(value, requires_grad=False)

    def release(self, j: int) -> None:
        for module, attribute, _, _ in self._params[j]:
            current = module._parameters[attribute]
            if not current.is_meta:
                module._parameters[attribute] = nn.Parameter(
                    torch.empty(current.shape, dtype=current.dtype, device="meta"), requires_grad=False
                )


def weights_bytes(config, dtype: torch.dtype) -> int:
    """About how many bytes a model of ``config`` takes in ``dtype`` (from its meta-device build)."""
    from transformers import AutoModel

    with torch.device("meta"):
        model = AutoModel.from_config(config)
    return sum(p.numel() for p in model.parameters()) * torch.empty((), dtype=dtype).element_size()


def memory_bytes() -> int:
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def should_stream(mode: str, config, dtype: torch.dtype) -> bool:
    """``on``/``off`` as asked; ``auto``: when the weights in the compute dtype would take over half of memory."""
    if mode not in STREAM_MODES:
        raise QuantsenseError(f"unknown --stream-blocks mode {mode!r}; use one of {', '.join(STREAM_MODES)}")
    if mode != "auto":
        return mode == "on"
    return weights_bytes(config, dtype) > AUTO_SHARE * memory_bytes()


def build_streamed(head, config, dtype: torch.dtype, device: torch.device, source_of, on_missing) -> nn.Module:
    """The model of ``config`` with ``head`` (a task's), its blocks streamed from ``source_of(meta_model)`` (a
    :class:`WeightSource`), everything else read now. ``on_missing(model, keys)`` is called first with the parameters
    the files lack (it refuses them, as an eager load refuses weights transformers would initialise at random)."""
    from quantsense.models.units import _find_block_list

    with torch.device("meta"):
        model = head.auto().from_config(config, dtype=dtype)
    model.eval()
    source = source_of(model)
    prefix, blocks = _find_block_list(model, None)
    keys = model.state_dict().keys()
    on_missing(model, sorted(k for k in keys if k not in source.keys() and not _tied(model, k)))
    _read_resident(model, source, dtype, device, prefix)
    model.quantsense_stream = StreamedBlocks(prefix, blocks, source, dtype, device)
    return_freed_memory()
    return model


MMAP_THRESHOLD = 4 << 20


def return_freed_memory() -> bool:
    """Make glibc serve every allocation of 4 MiB or more from its own memory map, given back when freed.

    Streaming frees a block's weights (tensors of 16 to 235 MB on an 8B model) while the prefix cache keeps hidden
    states of 17 MB between them; glibc's heap, whose mmap threshold grows with each freed chunk up to 32 MiB, then
    cannot shrink past the kept ones: on the 32-layer 8B-shaped model the baseline's peak RSS was 8.0 GB with the
    default and 6.5 GB with this (the same numbers: only where memory comes from changes). Process-wide; a no-op
    (False) where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_MMAP_THRESHOLD = -3
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def _tied(model: nn.Module, key: str) -> bool:
    """A parameter the model ties to another one (e.g. lm_head.weight to the token embedding)."""
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    return key in tied


def _read_resident(model: nn.Module, source: WeightSource, dtype, device, prefix: str) -> None:
    """Every parameter and persistent buffer outside the blocks from the file; non-persistent buffers (rotary
    frequencies) computed as transformers computes them when it loads a model."""
    inside = f"{prefix}."
    done: dict[int, torch.Tensor] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        if key.startswith(inside) and isinstance(value, nn.Parameter):
            continue
        if id(value) in done or key not in source.keys():
            continue  # tied: set with the tensor it is tied to (below)
        module_name, _, attribute = key.rpartition(".")
        module = model.get_submodule(module_name)
        tensor = source.read(key, dtype if value.is_floating_point() else value.dtype).to(device)
        if attribute in module._parameters:
            module._parameters[attribute] = nn.Parameter(tensor, requires_grad=False)
        else:
            module._buffers[attribute] = tensor
        done[id(value)] = tensor
    model.tie_weights()
    for name, module in model.named_modules():
        meta = [b for b, v in module._buffers.items() if v is not None and v.is_meta]
        if not meta or any(True for _ in module.parameters(recurse=False)):
            continue  # a module with weights of its own is not re-initialised (its meta buffers are refused below)
        for b in meta:
            module._buffers[b] = torch.empty_like(module._buffers[b], device=device)
        model._init_weights(module)  # what transformers does for non-persistent buffers (e.g. RotaryEmbedding)
    left = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta and not n.startswith(inside)]
    if left:
        raise QuantsenseError(f"streaming the blocks left {', '.join(left[:4])} unread; pass --stream-blocks off")
