"""Layer-level behaviour of elastic (NLS), sparse (SparsePEFT) and quantization-aware (QA-SparsePEFT) LoRA."""

import pytest
import torch

from slimtune.adapters import add_lora, merge_lora
from slimtune.adapters.lora import LoraLinear, check_rank_space
from slimtune.errors import ConfigError
from slimtune.quant import QuantLinear, compute_params


def _sparse_linear(out=16, inp=32, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    base = torch.nn.Linear(inp, out).to(dtype)
    with torch.no_grad():
        base.weight.masked_fill_(torch.rand(out, inp) < 0.5, 0.0)
    return base


def _quant_linear(out=16, inp=32, seed=0, bits=4, group=8, symmetric=False):
    base = _sparse_linear(out, inp, seed, torch.float32)
    params = compute_params(base.weight.detach(), bits, group, symmetric)
    return QuantLinear.from_codes(params, params.quantize(base.weight.detach()), base.bias.detach()), base.weight.detach()


def _randomize(layer, seed=1):
    torch.manual_seed(seed)
    torch.nn.init.normal_(layer.lora_B.weight, std=0.5)
    torch.nn.init.normal_(layer.lora_A.weight, std=0.5)


def test_elastic_rank_uses_nested_slices_and_the_maximal_scaling():
    base = torch.nn.Linear(12, 7).double()
    layer = LoraLinear(base, r=8, alpha=16, rank_space=[8, 6, 4]).double()
    _randomize(layer)
    x = torch.randn(3, 12, dtype=torch.float64)
    a, b = layer.lora_A.weight, layer.lora_B.weight
    for r in (8, 6, 4):
        layer.active_rank = r
        ref = base(x) + 2.0 * x @ a[:r].T @ b[:, :r].T  # s = alpha / r_max for every active rank
        torch.testing.assert_close(layer(x), ref, rtol=0, atol=1e-12)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), ref, rtol=0, atol=1e-12)
    layer.active_rank = 4
    layer(x).sum().backward()
    assert layer.lora_A.weight.grad[4:].abs().sum() == 0 and layer.lora_A.weight.grad[:4].abs().sum() > 0
    assert layer.lora_B.weight.grad[:, 4:].abs().sum() == 0
    with pytest.raises(ConfigError, match="not in this adapter's rank space"):
        layer.active_rank = 5


@pytest.mark.parametrize("space, message", [([32, 48, 16], "strictly descending"), ([16, 24], "strictly descending"),
                                            ([48, 32], "rank above it"), ([], "non-empty"), ([32, 0], "positive")])
def test_bad_rank_spaces_are_rejected(space, message):
    with pytest.raises(ConfigError, match=message):
        check_rank_space(space, 32)


def test_sparse_update_is_masked_in_forward_backward_and_merge():
    base = _sparse_linear()
    zeros = base.weight == 0
    layer = LoraLinear(base, r=4, alpha=8, sparse=True)
    _randomize(layer)
    x = torch.randn(2, 5, 32, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a, b: layer(x), (x, layer.lora_A.weight, layer.lora_B.weight))
    # Against plain autograd of the definition y = (W + (s·B·A) ⊙ M)·x + b.
    a = layer.lora_A.weight.detach().clone().requires_grad_()
    b = layer.lora_B.weight.detach().clone().requires_grad_()
    ref = torch.nn.functional.linear(x, base.weight + (2.0 * b @ a) * (~zeros), base.bias)
    out = layer(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    out.square().sum().backward()
    ref.square().sum().backward()
    torch.testing.assert_close(layer.lora_A.weight.grad, a.grad)
    torch.testing.assert_close(layer.lora_B.weight.grad, b.grad)
    model = torch.nn.Sequential(layer)
    with torch.no_grad():
        unmerged = model(x)
        merge_lora(model)
        assert isinstance(model[0], torch.nn.Linear)
        assert torch.equal(model(x), unmerged)  # bitwise: the merge writes the forward's weight
    assert torch.equal(model[0].weight == 0, zeros)  # every zero kept, no new ones


def test_quant_aware_forward_is_the_grid_of_the_merged_weight_with_a_straight_through_gradient():
    qbase, _ = _quant_linear()
    grid = qbase.params
    layer = LoraLinear(qbase, r=4, alpha=8, sparse=True, quant_aware=True)
    _randomize(layer)
    assert torch.equal(layer.pruned, qbase.weight == 0)
    x = torch.randn(3, 32)
    a = layer.lora_A.weight.detach().clone().requires_grad_()
    b = layer.lora_B.weight.detach().clone().requires_grad_()
    w_m = qbase.weight + (2.0 * b @ a).masked_fill(layer.pruned, 0.0)
    w_hat = grid.dequantize(grid.quantize(w_m.detach()))
    ref = torch.nn.functional.linear(x, w_m + (w_hat - w_m).detach(), qbase.bias)  # STE as SQFT writes it
    out = layer(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    out.square().sum().backward()
    ref.square().sum().backward()
    torch.testing.assert_close(layer.lora_A.weight.grad, a.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.lora_B.weight.grad, b.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("use_float_weights", [False, True])
def test_quant_aware_merge_lands_on_the_same_grid_exactly(symmetric, use_float_weights):
    qbase, float_weight = _quant_linear(symmetric=symmetric)
    grid_bytes = qbase.params.to_bytes()
    # The pruned weights: zeros of the weights the update is merged into.
    zeros_before = (float_weight == 0) if use_float_weights else (qbase.weight == 0)
    model = torch.nn.Sequential(qbase)
    (layer,) = add_lora(model, ["0"], r=4, alpha=8, sparse=True, quant_aware=True,
                        qa_weights={"0": float_weight} if use_float_weights else None).values()
    x = torch.randn(4, 32)
    with torch.no_grad():
        at_init = model(x)
        if not use_float_weights:  # W = the dequantized base: at initialisation it IS the quantized model
            assert torch.equal(at_init, qbase(x))
    _randomize(layer)
    with torch.no_grad():
        unmerged = model(x)
        merge_lora(model)
    merged = model[0]
    assert isinstance(merged, QuantLinear)
    assert merged.params.to_bytes() == grid_bytes  # same scales, zero points, bits, groups
    with torch.no_grad():
        assert (model(x) - unmerged).abs().max() <= 1e-5
        assert torch.equal(model(x), unmerged)
    zeros_after = merged.codes() == merged.zeros.repeat_interleave(8, dim=1)
    assert zeros_after[zeros_before].all()  # every pruned weight is still exactly zero
    assert (merged.weight[zeros_before] == 0).all()


def test_lora_on_a_quantized_base_merges_to_a_float_layer():
    qbase, _ = _quant_linear()
    model = torch.nn.Sequential(qbase)
    (layer,) = add_lora(model, ["0"], r=4, alpha=8).values()
    _randomize(layer)
    x = torch.randn(4, 32)
    with torch.no_grad():
        unmerged = model(x)
        merge_lora(model)
        assert type(model[0]) is torch.nn.Linear
        torch.testing.assert_close(model(x), unmerged, rtol=1e-5, atol=1e-5)


def test_sparse_and_quant_aware_adapters_reject_dropout_and_float_bases():
    with pytest.raises(ConfigError, match="dropout 0"):
        LoraLinear(_sparse_linear(), r=4, alpha=8, dropout=0.1, sparse=True)
    with pytest.raises(ConfigError, match="quantize the base first"):
        LoraLinear(_sparse_linear(), r=4, alpha=8, quant_aware=True)
