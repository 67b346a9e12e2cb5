import pytest
import torch
from torch import nn

from slimtune.quant import QuantLinear, compute_params, quantize_model_linears


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_forward_equals_linear_with_dequantized_weight(bits, symmetric):
    torch.manual_seed(0)
    lin = nn.Linear(64, 24)
    p = compute_params(lin.weight.detach(), bits, 16, symmetric)
    ql = QuantLinear.from_codes(p, p.quantize(lin.weight.detach()), lin.bias.detach())
    ref = nn.Linear(64, 24)
    ref.weight.data = ql.dequantized_weight()
    ref.bias.data = lin.bias.detach().clone()
    x = torch.randn(3, 5, 64)
    assert torch.equal(ql(x), ref(x))
    assert torch.equal(ql.dequantized_weight(), p.fake_quantize(lin.weight.detach()))
    assert ql.params == p


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_packed_storage_is_bits_over_8_per_weight(bits, symmetric):
    ql = QuantLinear(576, 96, bits, 64, symmetric)
    assert ql.qweight.numel() * 4 == 576 * 96 * bits // 8
    # per group of 64: a float32 scale, plus an int8 zero point when asymmetric (symmetric: implied)
    overhead = (4 if symmetric else 5) / 64
    assert ql.storage_bytes() / (576 * 96) == pytest.approx(bits / 8 + overhead)


def test_weight_cache_is_invalidated():
    torch.manual_seed(1)
    w = torch.randn(8, 32)
    p = compute_params(w, 4, 16, False)
    ql = QuantLinear.from_codes(p, p.quantize(w))
    x = torch.randn(2, 32)
    first = ql(x)
    assert ql(x) is not first and torch.equal(ql(x), first)       # cached weight, same result
    p2 = compute_params(2 * w, 4, 16, False)
    ql.set_quantized(p2, p2.quantize(2 * w))                       # in-place buffer updates
    assert torch.equal(ql(x), x @ p2.fake_quantize(2 * w).t())
    ql.load_state_dict(QuantLinear.from_codes(p, p.quantize(w)).state_dict())
    assert torch.equal(ql(x), first)
    assert ql(x.double()).dtype == torch.float64


def test_quantize_model_linears_replaces_modules(qtiny):
    model, _ = qtiny
    name = "model.layers.0.mlp.down_proj"
    w = model.get_submodule(name).weight.detach().clone()
    p = compute_params(w, 4, 32, True)
    quantize_model_linears(model, {name: (p, p.quantize(w))})
    mod = model.get_submodule(name)
    assert isinstance(mod, QuantLinear) and mod.params == p
    assert torch.equal(mod.weight, p.fake_quantize(w))
