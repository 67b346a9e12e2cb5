"""The adapter-layer contract (adapters.base) as LoraLinear implements it, variants included."""

import pytest
import torch

from slimtune.adapters import AdapterLayer, adapter_layers, add_lora, merge_adapters
from slimtune.adapters.lora import LoraLinear
from slimtune.errors import ConfigError
from slimtune.nas.subnetwork import _sliced_lora
from slimtune.quant import QuantLinear, compute_params


def _layer(sparse=False, quant_aware=False, seed=0):
    torch.manual_seed(seed)
    base = torch.nn.Linear(32, 16)
    with torch.no_grad():
        base.weight.masked_fill_(torch.rand(16, 32) < 0.5, 0.0)
    if quant_aware:
        params = compute_params(base.weight.detach(), 4, 8, False)
        base = QuantLinear.from_codes(params, params.quantize(base.weight.detach()), base.bias.detach())
    layer = LoraLinear(base, r=4, alpha=8, rank_space=[4, 2], sparse=sparse, quant_aware=quant_aware)
    torch.nn.init.normal_(layer.lora_B.weight, std=0.5)
    return layer


@pytest.mark.parametrize("sparse, quant_aware, names", [(False, False, ()), (True, False, ("sparse",)),
                                                       (False, True, ("quant_aware",)),
                                                       (True, True, ("sparse", "quant_aware"))])
def test_lora_layers_implement_the_contract(sparse, quant_aware, names):
    layer = _layer(sparse, quant_aware)
    assert isinstance(layer, AdapterLayer) and tuple(v.name for v in layer.variants) == names
    assert layer.axes == {"rank": 4, "out": 16, "in": 32}
    assert [n for n, _ in layer.adapter_parameters()] == ["lora_A.weight", "lora_B.weight"]
    layer.set_axis("rank", 2)
    exported = layer.export()
    assert exported.rank == 2 and exported.alpha == 4.0 and exported.variants == names
    assert torch.equal(exported.tensors["lora_B.weight"], layer.lora_B.weight[:, :2])
    assert (layer.peft_export() is None) == bool(names)  # only a plain LoRA is a stock PEFT adapter
    with torch.no_grad():
        x = torch.randn(3, 32)
        unmerged = layer(x)
        effective = layer.effective_weight().clone()
        merged = layer.merge()
        assert not isinstance(merged, AdapterLayer)
        torch.testing.assert_close(merged(x), unmerged, rtol=0, atol=1e-5)
        torch.testing.assert_close(merged.weight, effective, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="no width axis"):
        _layer().set_axis("depth", 2)


@pytest.mark.parametrize("sparse, quant_aware", [(False, False), (True, False)])
def test_a_width_sliced_layer_equals_the_smaller_layer(sparse, quant_aware):
    layer = _layer(sparse, quant_aware)
    layer.set_axis("out", 10)
    layer.set_axis("in", 20)
    x = torch.randn(3, 20)
    out = layer(x)
    assert out.shape == (3, 10)
    small = _sliced_lora(layer, 10, 20, 4)
    torch.testing.assert_close(small(x), out, rtol=0, atol=1e-6)
    out.sum().backward()
    assert layer.lora_A.weight.grad[:, 20:].abs().sum() == 0 and layer.lora_B.weight.grad[10:].abs().sum() == 0
    assert layer.lora_B.weight.grad[:10].abs().sum() > 0
    layer.set_axis("out", 16)
    layer.set_axis("in", 32)
    assert not layer.width_sliced


def test_stages_find_adapters_through_the_contract():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    add_lora(model, ["0", "1"], r=2, alpha=4)
    assert set(adapter_layers(model)) == {"0", "1"}
    merge_adapters(model)
    assert not adapter_layers(model) and isinstance(model[0], torch.nn.Linear)
