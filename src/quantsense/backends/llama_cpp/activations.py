"""llama.cpp's rounding of activations in its CPU matrix products, as fake quantization of a linear's input.

ggml multiplies a quantized weight by activations quantized to the weight type's ``vec_dot_type`` (ggml-cpu's type
traits): the legacy and IQ4_NL types by 8-bit groups of 32 values (``q8_0``; ``q8_1`` for the ``_1`` types, the same values
with a block sum), the K and 256-block IQ types by 8-bit blocks of 256 with one float scale (``q8_K``), f16 and bf16
weights by activations rounded to that dtype. The product is then exactly the dot product of the dequantized weights
with the dequantized activations (up to float summation order), so rounding the input of a fake-quantized linear
this way reproduces what llama.cpp computes: with it the simulation's KL of a plan lands within a few percent of
llama.cpp's own (``llama-perplexity --kl-divergence``), where weights alone leave llama.cpp about 15 % higher.

- ``q8_0`` / ``q8_1``: per block of 32, ``d = max|x| / 127``, ``q = round(x / d)``, ``x_hat = q * f16(d)``
  (ggml-cpu rounds to nearest even on x86; the stored scale is float16);
- ``q8_K``: per block of 256, ``iscale = -127 / m`` with ``m`` the element of largest magnitude (signed),
  ``q = min(round(iscale * x), 127)``, ``x_hat = q / iscale`` (the scale stays float32).
"""

from __future__ import annotations

import functools

import torch

from quantsense.backends.llama_cpp.ggml_types import TYPES

BLOCK = {"q8_0": 32, "q8_1": 32, "q8_K": 256}


def _q8_small(x: torch.Tensor) -> torch.Tensor:
    blocks = x.reshape(-1, 32)
    d = blocks.abs().amax(dim=1, keepdim=True) / 127
    inverse = torch.where(d == 0, torch.zeros_like(d), 1 / torch.where(d == 0, torch.ones_like(d), d))
    return (torch.round(blocks * inverse) * d.half().float()).reshape(x.shape)


def _q8_k(x: torch.Tensor) -> torch.Tensor:
    blocks = x.reshape(-1, 256)
    largest = torch.gather(blocks, 1, blocks.abs().argmax(dim=1, keepdim=True))
    iscale = torch.where(
        largest == 0, torch.zeros_like(largest), -127 / torch.where(largest == 0, torch.ones_like(largest), largest)
    )
    codes = torch.clamp(torch.round(iscale * blocks), max=127)
    scale = torch.where(
        iscale == 0, torch.zeros_like(iscale), 1 / torch.where(iscale == 0, torch.ones_like(iscale), iscale)
    )
    return (codes * scale).reshape(x.shape)


def round_activations(x: torch.Tensor, kind: str) -> torch.Tensor:
    """``x`` (any shape, last axis the input features) as ggml-cpu rounds it for a dot product of type ``kind``."""
    if kind in ("f16", "bf16"):
        return x.to(torch.float16 if kind == "f16" else torch.bfloat16).to(x.dtype)
    if x.shape[-1] % BLOCK[kind]:
        return x  # ggml would not pair such a row with this type; the weight format refuses it first
    rounded = _q8_k(x.float()) if kind == "q8_K" else _q8_small(x.float())
    return rounded.to(x.dtype)


@functools.lru_cache(maxsize=None)
def _rounding(kind: str):
    return functools.partial(round_activations, kind=kind)


def rounding_for(weight_type: str):
    """The input rounding of a linear stored as ``weight_type`` (a function of the input; types that round alike share
    one), or None for a type llama.cpp multiplies in float (f32)."""
    kind = TYPES[weight_type].vec_dot if weight_type in TYPES else None
    return None if kind is None else _rounding(kind)
