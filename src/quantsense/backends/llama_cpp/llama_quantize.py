"""llama.cpp's own quantizer, ``llama_model_quantize`` (what the ``llama-quantize`` tool runs), called through
llama-cpp-python: a preset (``Q4_K_M``...) or a base type, per-tensor type overrides (``--tensor-type``) and
importance-matrix weights (``--imatrix``), passed as the C API's structures. quantsense uses it as the reference its
preset rules and its own GGUF writer are tested against, and to reproduce a plan the way a llama.cpp user would.
"""

from __future__ import annotations

import ctypes
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping

import numpy as np

from quantsense.errors import QuantsenseError


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        from quantsense.backends.llama_cpp.ggml_lib import INSTALL_HINT

        raise QuantsenseError(INSTALL_HINT.replace("ggml formats need", "llama_model_quantize needs")) from None
    return llama_cpp


def llama_quantize(
    source: str | Path,
    out: str | Path,
    ftype: int,
    overrides: Mapping[str, str] | None = None,
    importance: Mapping[str, np.ndarray] | None = None,
    provenance: Mapping | None = None,
    pure: bool = False,
    nthread: int = 0,
) -> Path:
    """Quantize the GGUF ``source`` into ``out`` with llama.cpp: ``ftype`` a llama_ftype number (the preset or base
    type), ``overrides`` GGUF tensor name -> type (each an exact-name pattern, like ``--tensor-type``), ``importance``
    GGUF tensor name -> imatrix weights (the mean squared activation per input column, as llama-quantize loads them),
    ``provenance`` the imatrix's ``quantize.imatrix.*`` keys (:func:`~quantsense.backends.llama_cpp.gguf_file.imatrix_keys`),
    which the llama-quantize tool passes as metadata overrides.
    ``pure``: tensors without an override get the base type itself, not the preset rules' choice (``--pure``).
    A quantized source is re-quantized from its de-quantized values (``--allow-requantize``)."""
    from quantsense.backends.llama_cpp.ggml_types import ggml_type

    llama_cpp = _llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.pure = pure
    params.nthread = nthread
    keep = []  # the arrays the C side reads must outlive the call
    if overrides:
        entries = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
        for i, (name, qtype) in enumerate(overrides.items()):
            entries[i].pattern = ("^" + re.escape(name) + "$").encode()
            entries[i].type = ggml_type(qtype)
        params.tt_overrides = entries
        keep.append(entries)
    if importance:
        entries = (llama_cpp.llama_model_imatrix_data * (len(importance) + 1))()
        for i, (name, values) in enumerate(importance.items()):
            array = np.ascontiguousarray(values, dtype=np.float32)
            keep.append(array)
            entries[i].name = name.encode()
            entries[i].data = array.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = array.size
        params.imatrix = entries
        keep.append(entries)
    if provenance:
        from quantsense.backends.llama_cpp.gguf_file import imatrix_keys

        keys = imatrix_keys(provenance)
        entries = (llama_cpp.llama_model_kv_override * (len(keys) + 1))()
        for i, (key, value) in enumerate(keys.items()):
            entries[i].key = key.encode()
            if isinstance(value, str):
                entries[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
                entries[i].value.val_str = value.encode()
            else:
                entries[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
                entries[i].value.val_i64 = value
        params.kv_overrides = entries
        keep.append(entries)
    out = Path(out)
    log: list[str] = []
    with _captured_log(llama_cpp, log):  # llama.cpp's page of per-tensor lines stays out of quantsense's output
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if status != 0 or not out.is_file():
        tail = " | ".join(line.strip() for line in log[-3:] if line.strip())
        raise QuantsenseError(f"llama_model_quantize failed on {source} (status {status}): {tail}")
    return out


@contextmanager
def _captured_log(llama_cpp, lines: list[str]):
    """llama.cpp's log messages into ``lines`` while the block runs (then llama-cpp-python's own logger again)."""

    @llama_cpp.llama_log_callback
    def keep(level, text, user_data):
        lines.append(text.decode(errors="replace") if text else "")
        del lines[:-50]

    llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))
    try:
        yield
    finally:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
