"""llama.cpp's own quantizers, called in ggml's shared library (``libggml-base``, shipped by ``llama-cpp-python``).

``ggml_quantize_chunk`` writes a tensor's rows in a ggml type (with an importance matrix where the type uses one: a
weight per input column for the rounding search, as ``llama-quantize --imatrix`` passes it), and the type's
``to_float`` trait reads them back: the pair is exactly what llama.cpp stores and computes with, so fake
quantization through it is llama.cpp's numerics by construction, not a port of them.

Everything here works on float32 numpy rows (``[rows, n_per_row]``, the GGUF layout: a row is one output's weights).
Without ``llama-cpp-python`` installed, :func:`library` raises a :class:`QuantsenseError` that says how to install it.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np

from quantsense.backends.llama_cpp.ggml_types import ggml_type
from quantsense.errors import QuantsenseError

INSTALL_HINT = (
    "ggml formats need llama.cpp's library: install llama-cpp-python "
    '(CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install -c constraints.txt -e ".[llama]")'
)


class _TypeTraits(ctypes.Structure):  # struct ggml_type_traits (ggml.h)
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)


def library_path() -> Path:
    """Where ``libggml-base`` lies inside the installed ``llama_cpp`` package (without importing llama.cpp's model
    code), or a :class:`QuantsenseError` saying how to install it."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise QuantsenseError(INSTALL_HINT)
    for folder in spec.submodule_search_locations:
        for name in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll"):
            found = Path(folder) / "lib" / name
            if found.exists():
                return found
    raise QuantsenseError(f"llama_cpp is installed but its lib/ has no libggml-base; {INSTALL_HINT}")


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    path = library_path()
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise QuantsenseError(f"{path} does not load ({exc}); {INSTALL_HINT}") from None
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_float),
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.POINTER(ctypes.c_float),
    ]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    return lib


def available() -> bool:
    try:
        library()
    except (QuantsenseError, OSError):
        return False
    return True


@functools.lru_cache(maxsize=None)
def block_size(name: str) -> int:
    """Weights per block of ``name`` (32 for q4_0 and iq4_nl, 256 for the K types and iq4_xs)."""
    return int(library().ggml_get_type_traits(ggml_type(name)).contents.blck_size)


def row_bytes(name: str, n_per_row: int) -> int:
    """Bytes of one row of ``n_per_row`` weights in ``name``, scales included."""
    return int(library().ggml_row_size(ggml_type(name), n_per_row))


def check_rows(name: str, n_per_row: int) -> None:
    """ggml does not check row widths: a row that is not a whole number of blocks would be misread (and with an
    importance matrix comes back as NaN), so it is refused here."""
    if n_per_row % block_size(name):
        raise QuantsenseError(f"{name} needs rows that are multiples of {block_size(name)} weights; got {n_per_row}")


def quantize(name: str, rows: np.ndarray, imatrix: np.ndarray | None = None) -> bytes:
    """``rows`` ([n, n_per_row] float32) in ggml type ``name``, as llama.cpp writes them (``imatrix``: one weight per
    input column, llama.cpp's mean squared activation; used by the types whose quantizer takes one)."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if rows.ndim != 2:
        raise QuantsenseError(f"ggml quantizes [rows, n_per_row] matrices; got shape {rows.shape}")
    n, width = rows.shape
    check_rows(name, width)
    weights = None
    if imatrix is None and library().ggml_quantize_requires_imatrix(ggml_type(name)):  # ggml would abort the process
        raise QuantsenseError(
            f"{name} needs an importance matrix (ggml cannot quantize it without one): pass --imatrix"
        )
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
        if imatrix.shape != (width,):
            raise QuantsenseError(f"an importance matrix for rows of {width} needs {width} values; got {imatrix.shape}")
        weights = imatrix.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    out = ctypes.create_string_buffer(n * row_bytes(name, width))
    source, kind = rows.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), ggml_type(name)
    written = sum(
        _in_parallel(
            n,
            width,
            lambda first, count: library().ggml_quantize_chunk(kind, source, out, first * width, count, width, weights),
        )
    )  # rows are independent: bit-exact in any split
    if written != len(out):
        raise QuantsenseError(f"ggml wrote {written} bytes for {name}, expected {len(out)}")
    return out.raw


def dequantize(name: str, data: bytes, shape: tuple[int, int]) -> np.ndarray:
    """``data`` in ggml type ``name`` read back as float32 ``shape`` by the type's own ``to_float``."""
    n, width = shape
    if len(data) != n * row_bytes(name, width):
        raise QuantsenseError(f"{len(data)} bytes do not hold a {n}x{width} {name} tensor")
    traits = library().ggml_get_type_traits(ggml_type(name)).contents
    out = np.empty((n, width), dtype=np.float32)
    buffer = ctypes.create_string_buffer(data, len(data))
    to_float, base, size = _TO_FLOAT(traits.to_float), ctypes.addressof(buffer), row_bytes(name, width)
    _in_parallel(
        n,
        width,
        lambda first, count: to_float(
            base + first * size,
            out[first : first + count].ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
            count * width,
        ),
    )
    return out


PARALLEL_MIN_WEIGHTS = 1 << 16  # below this a tensor is quantized on one thread


@functools.lru_cache(maxsize=1)
def _pool():
    import os
    from concurrent.futures import ThreadPoolExecutor

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if hasattr(os, "register_at_fork"):  # a forked child has none of these threads: it makes its own pool
        os.register_at_fork(after_in_child=_pool.cache_clear)
    return ThreadPoolExecutor(max(1, cores), thread_name_prefix="quantsense-ggml")


def _in_parallel(n: int, width: int, call) -> list:
    """``call(first_row, rows)`` over contiguous row ranges covering ``n`` rows, one per core (ctypes releases the GIL
    during the C call, so ggml's single-threaded quantizers run side by side)."""
    parts = min(_pool()._max_workers, n) if n * width >= PARALLEL_MIN_WEIGHTS else 1
    bounds = [n * i // parts for i in range(parts + 1)]
    ranges = [(a, b - a) for a, b in zip(bounds, bounds[1:]) if b > a]
    if len(ranges) == 1:
        return [call(*ranges[0])]
    return list(_pool().map(lambda r: call(*r), ranges))


def fake_quantize(name: str, rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """``rows`` through llama.cpp's quantizer and back: the float32 values llama.cpp computes with."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    return dequantize(name, quantize(name, rows, imatrix), rows.shape)
