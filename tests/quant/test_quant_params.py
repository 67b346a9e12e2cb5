import pytest
import torch

from slimtune.errors import ConfigError
from slimtune.quant import QuantParams, check_group_size, compute_params, dividing_group_sizes


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [16, -1])
def test_grid_round_trip(bits, symmetric, group_size):
    torch.manual_seed(bits)
    w = torch.randn(8, 64) * torch.rand(8, 1)
    p = compute_params(w, bits, group_size, symmetric)
    q = p.quantize(w)
    assert q.dtype == torch.uint8 and int(q.max()) <= 2 ** bits - 1
    assert p.zeros.dtype == torch.int32 and p.scales.dtype == torch.float32
    assert p.scales.shape == (8, 1 if group_size == -1 else 64 // group_size)
    wq = p.dequantize(q)
    # On-grid weights are fixed points; rounding error is at most half a step inside the range.
    assert torch.equal(p.quantize(wq), q)
    assert torch.equal(p.fake_quantize(wq), wq)
    s = p.scales.repeat_interleave(64 // p.n_groups, dim=1)  # per-weight scale
    inside = (w >= p.dequantize(torch.zeros_like(q))) & (w <= p.dequantize(torch.full_like(q, 2 ** bits - 1)))
    assert ((w - wq).abs()[inside] <= s[inside] / 2 * (1 + 1e-5)).all()
    if symmetric:
        assert (p.zeros == 2 ** (bits - 1)).all()


def test_quantize_is_the_stated_formula():
    torch.manual_seed(0)
    w = torch.randn(4, 32)
    p = compute_params(w, 4, 8, False)
    s = p.scales.repeat_interleave(8, dim=1)
    z = p.zeros.repeat_interleave(8, dim=1).float()
    q = torch.clamp(torch.round(w / s + z), 0, 15)
    assert torch.equal(p.quantize(w).float(), q)
    assert torch.equal(p.dequantize(q.to(torch.uint8)), s * (q - z))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_zero_is_exactly_representable(bits, symmetric):
    torch.manual_seed(1)
    w = torch.rand(6, 32) + 0.5          # all positive: 0 lies outside the weights' own range
    w[:, ::3] = 0
    w[0] = 0                             # an all-zero row
    w[1] = -w[1]                         # all negative
    p = compute_params(w, bits, 16, symmetric)
    q = p.quantize(w)
    assert torch.equal(q[w == 0].int(), p.zeros.repeat_interleave(16, 1)[w == 0])
    assert (p.dequantize(q)[w == 0] == 0).all()


def test_serialization_is_byte_identical_and_equality():
    torch.manual_seed(2)
    p = compute_params(torch.randn(5, 48), 3, 16, False)
    again = QuantParams.from_state_dict(p.state_dict())
    assert again == p and again.to_bytes() == p.to_bytes()
    other = QuantParams(p.bits, p.group_size, p.symmetric, p.scales * 1.0000001, p.zeros)
    assert other != p or torch.equal(other.scales, p.scales)
    with_gidx = QuantParams(p.bits, p.group_size, p.symmetric, p.scales, p.zeros,
                            torch.arange(48) // 16)
    assert with_gidx != p
    assert QuantParams.from_state_dict(with_gidx.state_dict()) == with_gidx


def test_bad_bits_and_float_zero_points_rejected():
    with pytest.raises(ConfigError, match="bits=5 is not supported; choose from 2, 3, 4, 8"):
        compute_params(torch.randn(2, 8), 5, 4)
    with pytest.raises(ValueError, match="integers"):
        QuantParams(4, 4, False, torch.ones(2, 2), torch.full((2, 2), 0.5))


def test_group_size_error_names_layer_and_fitting_sizes():
    layers = {"model.layers.0.self_attn.q_proj": 576, "model.layers.0.mlp.down_proj": 1536}
    assert dividing_group_sizes(layers.values()) == [2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 192]
    with pytest.raises(ConfigError) as e:
        check_group_size(128, layers)
    msg = str(e.value)
    assert "group size 128 does not divide model.layers.0.self_attn.q_proj's 576 inputs" in msg
    assert "32, 48, 64, 96, 192" in msg
    assert check_group_size(192, layers) == 192 and check_group_size(-1, layers) == -1
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ConfigError, match="group_size must be"):
            check_group_size(bad, layers)
