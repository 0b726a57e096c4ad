"""Weight formats: one registered entry per format family (:mod:`.base` says what an entry answers).

- :class:`QuantConfig` (:mod:`.integer`): round-to-nearest integer grids ``int2`` .. ``int8``, exported with torchao.
- :class:`GGUFFormat` (:mod:`.gguf`): llama.cpp's ``q8_0 q5_1 q5_0 q4_1 q4_0 f16 bf16``, exported as GGUF.
- :class:`GGMLFormat` (:mod:`.ggml`): llama.cpp's ``q2_K .. q6_K iq4_nl iq4_xs``, quantized by ggml's own library.
- :class:`OrtFormat` (:mod:`.ort`): ONNX Runtime's ``ort-int8`` (dynamic int8) and ``ort-int4`` (MatMulNBits), exported as ONNX.

A new family is one module with a ``@register_format`` class, imported here (or by the user before use).
:func:`parse_format` turns what a user types (``4``, ``int4``, ``q4_0``) into a format;
:func:`format_from_dict` reads a plan file entry.
"""

from quantsense.quantization.formats.base import (
    FORMAT_FAMILIES,
    Format,
    WeightFormat,
    format_from_dict,
    format_levels,
    format_vocabulary,
    parse_format,
    register_format,
)
from quantsense.quantization.formats.integer import GRANULARITIES, MAX_BITS, MIN_BITS, QuantConfig
from quantsense.quantization.formats.gguf import GGUFFormat, gguf_format_names  # noqa: E402  (registered after int)
from quantsense.quantization.formats.ggml import GGMLFormat  # noqa: E402  (registered after gguf)
from quantsense.quantization.formats.ort import OrtFormat  # noqa: E402  (registered after ggml)

__all__ = ["FORMAT_FAMILIES", "Format", "GGMLFormat", "GGUFFormat", "GRANULARITIES", "MAX_BITS", "MIN_BITS", "OrtFormat", "QuantConfig", "WeightFormat",
           "format_from_dict", "format_levels", "format_vocabulary", "gguf_format_names", "parse_format", "register_format"]
