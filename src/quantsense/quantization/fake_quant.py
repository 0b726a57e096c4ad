"""Round-to-nearest weight quantization on the same integer grid as PyTorch and torchao.

For a weight row (or group, or the whole tensor) ``w`` and ``b`` bits:

symmetric (default)
    qmin, qmax = -2**(b-1), 2**(b-1) - 1
    scale = max(|w|) / ((qmax - qmin) / 2)          # e.g. max|w| / 127.5 at INT8, / 7.5 at INT4
    q = clamp(round(w * (1 / scale)), qmin, qmax);  w_hat = q * scale

asymmetric
    qmin, qmax = 0, 2**b - 1
    lo, hi = min(min(w), 0), max(max(w), 0)
    scale = (hi - lo) / (qmax - qmin);  zp = clamp(qmin - round(lo / scale), qmin, qmax)
    q = clamp(round(w * (1 / scale)) + zp, qmin, qmax);  w_hat = (q - zp) * scale

``round`` is round-half-to-even (``torch.round``) and scales are clamped below by the smallest
normal float32. This is torchao's ``choose_qparams_affine`` / ``quantize_affine`` /
``dequantize_affine`` exactly, so a plan exported with torchao's ``IntxWeightOnlyConfig`` computes
the same weights the simulation used. Dividing by 127.5 rather than 127 matters: at INT4 the two
conventions (7.5 vs 7) differ by several sentences on SST-2.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch


class Grid(Protocol):
    """The integer grid a weight is rounded to (what :class:`~quantsense.quantization.formats.QuantConfig` holds):
    this module asks only for these fields, so it needs no format class."""

    bits: int
    symmetric: bool
    granularity: str
    group_size: int | None


_EPS = torch.finfo(torch.float32).smallest_normal


def _grouped(weight: torch.Tensor, config: Grid) -> torch.Tensor:
    """View a 2-D [out, in] weight as [n_scales, elements_per_scale]."""
    if config.granularity == "per_tensor":
        return weight.reshape(1, -1)
    if config.granularity == "per_channel":
        return weight.reshape(weight.shape[0], -1)
    in_features = weight.shape[1]
    if in_features % config.group_size:
        config.check_shape(tuple(weight.shape))
    return weight.reshape(-1, config.group_size)


def quantize_qparams(weight: torch.Tensor, config: Grid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer codes, scales and zero points of a 2-D [out, in] weight, each scale row-aligned."""
    w = _grouped(weight.detach().float(), config)
    lo = torch.clamp(w.amin(dim=1, keepdim=True), max=0.0)
    hi = torch.clamp(w.amax(dim=1, keepdim=True), min=0.0)
    if config.symmetric:
        scale = torch.maximum(-lo, hi) / (float(config.qmax - config.qmin) / 2)
        scale = torch.clamp(scale, min=_EPS)
        zero_point = torch.zeros_like(scale)
    else:
        scale = torch.clamp((hi - lo) / float(config.qmax - config.qmin), min=_EPS)
        zero_point = torch.clamp(config.qmin - torch.round(lo / scale), config.qmin, config.qmax)
    codes = torch.clamp(torch.round(w * (1.0 / scale)) + zero_point, config.qmin, config.qmax)
    return codes, scale, zero_point


def fake_quantize(weight: torch.Tensor, config: Grid, transposed: bool = False) -> torch.Tensor:
    """Quantize-dequantize ``weight`` and return a new tensor of the same shape and dtype.

    ``transposed`` is for weights stored [in, out] (GPT-2's ``Conv1D``): output channels are columns.
    """
    w = weight.t() if transposed else weight
    codes, scale, zero_point = quantize_qparams(w, config)
    dequant = ((codes - zero_point) * scale).reshape(w.shape)
    if transposed:
        dequant = dequant.t()
    return dequant.to(weight.dtype).contiguous()


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when identical)."""
    reference = reference.detach().double()
    noise = (reference - approx.detach().double()).pow(2).sum().item()
    signal = reference.pow(2).sum().item()
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise)
