"""Weight formats: one registered entry per format family (:mod:`.base` says what an entry answers).

- :class:`QuantConfig` (:mod:`.integer`): round-to-nearest integer grids ``int2`` .. ``int8``, exported with torchao.
- every runtime's own families, registered by its package under :mod:`quantsense.backends`: llama.cpp's
  ``q8_0 .. q4_0 f16 bf16`` and ``q2_K .. q6_K iq4_nl iq4_xs`` (``backends/llama_cpp/formats``), ONNX Runtime's
  ``ort-int8`` and ``ort-int4`` (``backends/onnxruntime/formats.py``).

A new family is one module with a ``@register_format`` class, in a backend folder (or imported by the user before use).
:func:`parse_format` turns what a user types (``4``, ``int4``, ``q4_0``) into a format;
:func:`format_from_dict` reads a plan file entry. The runtimes' families register when the registry is first asked
(:func:`format_families`), so importing a plan or a format never imports a runtime.
"""

from quantsense.quantization.formats.base import (
    FORMAT_FAMILIES,
    Format,
    WeightFormat,
    format_families,
    format_from_dict,
    format_levels,
    format_vocabulary,
    load_backends,
    parse_format,
    register_format,
)
from quantsense.quantization.formats.integer import GRANULARITIES, MAX_BITS, MIN_BITS, QuantConfig

__all__ = [
    "FORMAT_FAMILIES",
    "Format",
    "GRANULARITIES",
    "MAX_BITS",
    "MIN_BITS",
    "QuantConfig",
    "WeightFormat",
    "format_families",
    "format_from_dict",
    "format_levels",
    "format_vocabulary",
    "load_backends",
    "parse_format",
    "register_format",
]
