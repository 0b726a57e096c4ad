import math

import pytest
import torch

from quantsense.config import QuantConfig
from quantsense.quantization.size import storage_bits
from quantsense.quantization.fake_quant import (
    fake_quantize,
    quantize_qparams,
    sqnr_db,
)


def _weight(rows=64, cols=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    return w * torch.logspace(-2, 0, rows).unsqueeze(1)  # rows of very different scales


def test_int8_sqnr_above_bound():
    w = _weight()
    assert sqnr_db(w, fake_quantize(w, QuantConfig(8))) > 38.0


def test_each_extra_bit_buys_about_6_db():
    w = _weight()
    values = [sqnr_db(w, fake_quantize(w, QuantConfig(b))) for b in range(3, 9)]
    steps = [b - a for a, b in zip(values, values[1:])]
    assert all(5.0 < s < 7.0 for s in steps), steps


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_per_channel_never_worse_than_per_tensor(bits):
    w = _weight(seed=bits)
    per_channel = sqnr_db(w, fake_quantize(w, QuantConfig(bits)))
    per_tensor = sqnr_db(w, fake_quantize(w, QuantConfig(bits, granularity="per_tensor")))
    assert per_channel >= per_tensor


def test_symmetric_grid_is_max_over_half_range():
    w = torch.tensor([[-1.0, 0.5, 0.25]])
    codes, scale, zp = quantize_qparams(w, QuantConfig(8))
    assert scale.item() == pytest.approx(1 / 127.5)
    # w * (1/scale) is -127.49999 in float32 (as in torchao), so the extreme lands on -127
    assert codes.tolist() == [[-127.0, 64.0, 32.0]]
    assert zp.item() == 0
    codes4, scale4, _ = quantize_qparams(w, QuantConfig(4))
    assert scale4.item() == pytest.approx(1 / 7.5)
    assert codes4.tolist() == [[-7.0, 4.0, 2.0]]


def test_asymmetric_on_grid_is_idempotent():
    scale = 0.01  # codes 0..255 with zero point 100: the tensor already lies on the INT8 grid
    w = (torch.arange(256, dtype=torch.float32).reshape(1, 256) - 100) * scale
    cfg = QuantConfig(8, symmetric=False, granularity="per_tensor")
    once = fake_quantize(w, cfg)
    assert torch.allclose(once, w, atol=1e-6)
    assert torch.equal(fake_quantize(once, cfg), once)


def test_per_group_uses_groups_of_input_features():
    w = _weight(rows=4, cols=64)
    w[:, :32] *= 100  # first group large, second small
    grouped = fake_quantize(w, QuantConfig(4, granularity="per_group", group_size=32))
    channel = fake_quantize(w, QuantConfig(4))
    assert sqnr_db(w[:, 32:], grouped[:, 32:]) > sqnr_db(w[:, 32:], channel[:, 32:]) + 10


def test_transposed_quantizes_columns():
    w = _weight(rows=16, cols=48)
    assert torch.equal(
        fake_quantize(w.t().contiguous(), QuantConfig(4), transposed=True), fake_quantize(w, QuantConfig(4)).t()
    )


def test_bad_group_size_is_an_error():
    from quantsense.errors import QuantsenseError

    with pytest.raises(QuantsenseError, match="group size 16 does not divide the 30 input features"):
        fake_quantize(torch.randn(4, 30), QuantConfig(4, granularity="per_group", group_size=16))


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group", [None, 32])
def test_matches_torchao_exactly(bits, symmetric, group):
    torchao = pytest.importorskip("torchao")
    from torchao.quantization import MappingType
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
        IntxUnpackedToInt8Tensor,
    )

    w = _weight(rows=32, cols=128, seed=bits)
    block = (1, group or w.shape[1])
    mapping = MappingType.SYMMETRIC if symmetric else MappingType.ASYMMETRIC
    ref = IntxUnpackedToInt8Tensor.from_hp(w, block, getattr(torch, f"int{bits}"), mapping_type=mapping).dequantize()
    cfg = QuantConfig(bits, symmetric=symmetric, granularity="per_group" if group else "per_channel", group_size=group)
    assert torch.equal(fake_quantize(w, cfg), ref)
    assert torchao is not None


def test_storage_bits_counts_scales_and_zero_points():
    assert storage_bits((10, 20), None) == 32 * 200
    assert storage_bits((10, 20), QuantConfig(4)) == 4 * 200 + 32 * 10
    assert storage_bits((10, 20), QuantConfig(4, symmetric=False)) == 4 * 200 + 40 * 10
    assert storage_bits((10, 20), QuantConfig(4, granularity="per_group", group_size=5)) == 4 * 200 + 32 * 40
    assert storage_bits((20, 10), QuantConfig(8), transposed=True) == 8 * 200 + 32 * 10
    assert math.isclose(storage_bits((384, 384), QuantConfig(4)) / (384 * 384), 4 + 32 / 384)
