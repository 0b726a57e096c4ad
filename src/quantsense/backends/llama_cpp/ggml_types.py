"""llama.cpp's weight types, one row each: every fact quantsense uses about a type lives in this table (ggml's
``ggml_type_traits`` and llama.cpp's rules), and every other module reads it from here.

Per type: weights and bytes per block (ggml's type traits: a test checks them against the library), the bits of one
weight's code (scales not counted; a plot's colour), which quantizer fake-quantizes it (``torch``: quantsense's port
of the ``gguf`` package's reference, bit-exact; ``ggml``: ggml's own, through ctypes), the type llama.cpp falls back to
for a row that is not a multiple of its block (``tensor_type_fallback`` in src/llama-quant.cpp), whether its quantizer
weights rounding by an importance matrix and whether llama-quantize refuses it without one, and the type its
activations are rounded to in ggml-cpu's dot products (``vec_dot_type``).
"""

from __future__ import annotations

from dataclasses import dataclass

from quantsense.errors import QuantsenseError


@dataclass(frozen=True)
class GgmlType:
    name: str
    block: int  # weights per block
    nbytes: int  # bytes per block
    code_bits: int  # bits of one weight's code, scales not counted
    quantizer: str  # "torch" (the reference port) or "ggml" (ggml's own library)
    vec_dot: str  # the type its activations are rounded to in ggml-cpu's dot products
    fallback: str | None = None  # llama.cpp's type for a row that is not a multiple of the block
    uses_imatrix: bool = False  # its quantizer weights rounding by an importance matrix
    needs_imatrix: bool = False  # llama-quantize refuses it without one (the grid needs the weights)

    @property
    def bits_per_weight(self) -> float:
        """Bits per weight with the block scales (q4_0 4.5, q4_K 4.5, q6_K 6.5625, f16 16)."""
        return 8 * self.nbytes / self.block


_IQ_LOW = dict(fallback="iq4_nl", uses_imatrix=True)
TYPES: dict[str, GgmlType] = {
    t.name: t
    for t in (
        # the legacy block types (blocks of 32 with an fp16 scale, _1 also an fp16 minimum) and the float types
        GgmlType("q8_0", 32, 34, 8, "torch", "q8_0"),
        GgmlType("q5_1", 32, 24, 5, "torch", "q8_1", uses_imatrix=True),
        GgmlType("q5_0", 32, 22, 5, "torch", "q8_0", uses_imatrix=True),
        GgmlType("q4_1", 32, 20, 4, "torch", "q8_1", uses_imatrix=True),
        GgmlType("q4_0", 32, 18, 4, "torch", "q8_0", uses_imatrix=True),
        GgmlType("f16", 1, 2, 16, "torch", "f16"),
        GgmlType("bf16", 1, 2, 16, "torch", "bf16"),
        # the K types (super-blocks of 256) and the IQ types, quantized by ggml itself
        GgmlType("q2_K", 256, 84, 2, "ggml", "q8_K", fallback="q4_0", uses_imatrix=True),
        GgmlType("q3_K", 256, 110, 3, "ggml", "q8_K", fallback="q4_0", uses_imatrix=True),
        GgmlType("q4_K", 256, 144, 4, "ggml", "q8_K", fallback="q5_0", uses_imatrix=True),
        GgmlType("q5_K", 256, 176, 5, "ggml", "q8_K", fallback="q5_1", uses_imatrix=True),
        GgmlType("q6_K", 256, 210, 6, "ggml", "q8_K", fallback="q8_0", uses_imatrix=True),
        GgmlType("iq4_nl", 32, 18, 4, "ggml", "q8_0", uses_imatrix=True),
        GgmlType("iq4_xs", 256, 136, 4, "ggml", "q8_K", fallback="iq4_nl", uses_imatrix=True),
        GgmlType("iq3_s", 256, 110, 3, "ggml", "q8_K", **_IQ_LOW),
        GgmlType("iq3_xxs", 256, 98, 3, "ggml", "q8_K", **_IQ_LOW),
        GgmlType("iq2_s", 256, 82, 2, "ggml", "q8_K", needs_imatrix=True, **_IQ_LOW),
        GgmlType("iq2_xs", 256, 74, 2, "ggml", "q8_K", needs_imatrix=True, **_IQ_LOW),
        GgmlType("iq2_xxs", 256, 66, 2, "ggml", "q8_K", needs_imatrix=True, **_IQ_LOW),
        GgmlType("iq1_m", 256, 56, 1, "ggml", "q8_K", needs_imatrix=True, **_IQ_LOW),
        GgmlType("iq1_s", 256, 50, 1, "ggml", "q8_K", needs_imatrix=True, **_IQ_LOW),
    )
}

# the default candidates of `quantsense quantize`: every type a llama.cpp CPU build multiplies fast that holds a
# 576-wide row or falls back to one, from 2.6 to 8.5 bits per weight
ALLOCATION_CANDIDATES = ("q2_K", "q3_K", "q4_0", "iq4_xs", "iq4_nl", "q4_K", "q5_0", "q5_1", "q5_K", "q6_K", "q8_0")


def names(quantizer: str) -> tuple[str, ...]:
    """The types one quantizer fake-quantizes, in table order."""
    return tuple(name for name, t in TYPES.items() if t.quantizer == quantizer)


def ggml_type(name: str):
    """ggml's ``enum ggml_type`` of a type name (any case, ``f32`` too), as the ``gguf`` package's
    ``GGMLQuantizationType`` (an int: ggml's own numbers)."""
    try:
        import gguf
    except ImportError:
        raise QuantsenseError("GGUF type lookup needs the optional gguf package: pip install gguf") from None
    try:
        return gguf.GGMLQuantizationType[name.upper()]
    except KeyError:
        raise QuantsenseError(f"unknown ggml type {name!r}") from None
