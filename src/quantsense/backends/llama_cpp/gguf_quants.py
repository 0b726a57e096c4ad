"""GGUF (llama.cpp) weight formats as fake quantization, bit for bit equal to the reference quantizers.

A GGUF tensor row is its input-feature axis (``ne[0]``); the q formats cut each row into blocks of 32
consecutive weights, each block stored with a float16 scale ``d`` (and a float16 minimum ``m`` for the
``_1`` formats). This module reproduces the arithmetic of the ``gguf`` Python package's reference code
(``gguf.quants``, itself a port of ``ggml-quants.c``) in float32 torch, vectorised over all blocks:

q4_0 / q5_0 (symmetric, ``L`` = 8 / 16)
    ``max`` = the block element of largest magnitude, with its sign (first one on ties)
    ``d = max / -L``;  ``id = 0 if d == 0 else 1 / d``
    ``q = min(trunc(x * id + (L + 0.5)), 2L - 1)``;  ``x_hat = f16(d) * (q - L)``
q4_1 / q5_1 (asymmetric, ``L`` = 15 / 31)
    ``d = (max(x) - min(x)) / L``;  ``id = 0 if d == 0 else 1 / d``
    ``q = min(trunc((x - min(x)) * id + 0.5), L)``;  ``x_hat = f16(d) * q + f16(min(x))``
q8_0
    ``d = max(|x|) / 127``;  ``q = round_half_away_from_zero(x * id)``;  ``x_hat = q * f16(d)``
f16 / bf16
    round to nearest even through that dtype.

The codes are computed with the float32 ``d`` and dequantized with the float16-rounded one, as the
reference does. Everything stays float32 (numpy >= 2 keeps float32 with Python scalars), divisions
are true divisions by a tensor (CUDA turns division by a Python scalar into a multiplication by its
reciprocal), and products and sums are separate operations (no fused multiply-add), so the result
matches ``gguf.quants.dequantize(gguf.quants.quantize(w, T), T)`` to the bit, signed zeros included.

One platform detail: a block whose float32 scale is below 2**-128 (largest magnitude under about
1e-37) makes ``1 / d`` overflow and its codes inf/NaN; numpy's cast of those to uint8/int8 is
platform-defined (0 on x86-64, which this module reproduces). Such a block dequantizes to zeros
whatever the codes; only the sign of those zeros could differ from the reference on another platform.
``gguf`` is not needed (:func:`~quantsense.backends.llama_cpp.ggml_types.ggml_type` names its types).
"""

from __future__ import annotations

import math

import torch

from quantsense.backends.llama_cpp.ggml_types import TYPES, names
from quantsense.errors import QuantsenseError

BLOCK_SIZE = 32

# name -> (elements per block, bytes per block) of the types quantized here (:mod:`.ggml_types`)
_LAYOUT: dict[str, tuple[int, int]] = {name: (TYPES[name].block, TYPES[name].nbytes) for name in names("torch")}

GGUF_FORMATS: dict[str, float] = {name: 8 * nbytes / block for name, (block, nbytes) in _LAYOUT.items()}


def _layout(name: str) -> tuple[int, int]:
    try:
        return _LAYOUT[name]
    except KeyError:
        raise QuantsenseError(f"unknown GGUF format {name!r}: known formats are {', '.join(_LAYOUT)}") from None


def block_size(name: str) -> int:
    """Elements per block of format ``name``: 32 for the q formats, 1 for f16 and bf16."""
    return _layout(name)[0]


def _check_rows(shape: tuple[int, ...], name: str, transposed: bool) -> None:
    """Raise unless the rows (input features) of a weight of ``shape`` split into whole blocks of ``name``."""
    block = block_size(name)
    if transposed and len(shape) != 2:
        raise QuantsenseError(f"transposed GGUF quantization needs a 2-D weight, got shape {tuple(shape)}")
    row = shape[0] if transposed else shape[-1]
    if row % block:
        raise QuantsenseError(
            f"weight of shape {tuple(shape)} cannot be stored as {name}: llama.cpp requires rows "
            f"({row} input features) to be multiples of {block}; use f16 or an int format for this weight"
        )


def gguf_storage_bits(shape: tuple[int, ...], name: str, transposed: bool = False) -> int:
    """Exact bits of a tensor of ``shape`` stored in format ``name``: bytes per block * blocks * 8."""
    _check_rows(tuple(shape), name, transposed)
    block, nbytes = _layout(name)
    return 8 * nbytes * (math.prod(shape) // block)


def _constant(value: float, like: torch.Tensor) -> torch.Tensor:
    # A 0-d tensor on the data's device: CUDA computes ``x / python_scalar`` as ``x * (1 / scalar)``.
    return torch.tensor(value, dtype=torch.float32, device=like.device)


def _finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    """In place, inf/NaN -> 0: numpy's float-to-uint8/int8 cast of the reference's codes on x86-64.

    Only a block whose scale is below 2**-128 (so ``1 / d`` overflows) has such codes.
    """
    return x.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


def _inverse(d: torch.Tensor) -> torch.Tensor:
    """``0 if d == 0 else 1 / d``, as the reference's ``np.where(d == 0, 0, 1 / d)``."""
    return torch.where(d == 0, torch.zeros_like(d), torch.reciprocal(d))


def _through_f16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).to(torch.float32)


# The reference's ``np.trunc`` becomes ``floor`` below: its argument is never negative (|x * id| is at
# most the number of levels up to one rounding, and 0.5 or levels + 0.5 is added), so the two agree,
# and torch's CPU trunc is not vectorised (about 15x slower than floor).


def _symmetric(blocks: torch.Tensor, levels: int) -> torch.Tensor:
    """q4_0 (levels 8) and q5_0 (levels 16)."""
    signed_max = blocks.gather(-1, blocks.abs().argmax(dim=-1, keepdim=True))
    d = signed_max / _constant(-levels, blocks)
    shifted = (blocks * _inverse(d)).add_(_constant(levels + 0.5, blocks))
    q = _finite_or_zero(shifted).floor_().clamp_(0, 2 * levels - 1)
    return q.sub_(levels).mul_(_through_f16(d))


def _asymmetric(blocks: torch.Tensor, levels: int) -> torch.Tensor:
    """q4_1 (levels 15) and q5_1 (levels 31)."""
    lo, hi = torch.aminmax(blocks, dim=-1, keepdim=True)
    d = (hi - lo) / _constant(levels, blocks)
    shifted = (blocks - lo).mul_(_inverse(d)).add_(_constant(0.5, blocks))
    q = _finite_or_zero(shifted).floor_().clamp_(0, levels)
    return q.mul_(_through_f16(d)).add_(_through_f16(lo))


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """The reference's ``np_roundf``: floor(|x|) + floor(2 * frac(|x|)), signed; exact for every float."""
    a = x.abs()
    floored = torch.floor(a)
    return a.sub_(floored).mul_(2).floor_().add_(floored).mul_(torch.sign(x))


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    d = blocks.abs().amax(dim=-1, keepdim=True) / _constant(127, blocks)
    # "+ 0" turns a -0 code into the +0 that the reference's int8 codes hold.
    q = _round_half_away(_finite_or_zero(blocks * _inverse(d))).add_(0.0)
    return q.mul_(_through_f16(d))


def _quantize_rows(rows: torch.Tensor, name: str) -> torch.Tensor:
    """Quantize-dequantize float32 ``rows`` (last axis = GGUF row) in format ``name``."""
    if name == "f16":
        return _through_f16(rows)
    if name == "bf16":
        return rows.to(torch.bfloat16).to(torch.float32)
    blocks = rows.reshape(-1, BLOCK_SIZE)
    if name == "q8_0":
        out = _q8_0(blocks)
    elif name in ("q4_0", "q5_0"):
        out = _symmetric(blocks, 8 if name == "q4_0" else 16)
    else:
        out = _asymmetric(blocks, 15 if name == "q4_1" else 31)
    return out.reshape(rows.shape)


def fake_quantize_gguf(weight: torch.Tensor, name: str, transposed: bool = False) -> torch.Tensor:
    """Quantize-dequantize ``weight`` [out, in] in GGUF format ``name``, blocks running along each row.

    ``transposed`` is for weights stored [in, out] (GPT-2's ``Conv1D``): blocks then run down the
    columns. Returns a new contiguous tensor of the same shape and dtype, computed in float32.
    """
    _check_rows(tuple(weight.shape), name, transposed)
    rows = weight.detach().t() if transposed else weight.detach()
    out = _quantize_rows(rows.to(torch.float32).contiguous(), name)
    if transposed:
        out = out.t()
    return out.to(weight.dtype).contiguous()
