"""The INT4 kernel inference path of QuantLinear: agreement with the exact dequantized path within
the stated tolerance, no float copy held, codes untouched, and clear fall-backs."""

import pytest
import torch
from torch import nn

from slimtune.deploy import int4
from slimtune.quant import QuantLinear, compute_params, quantize_model
from slimtune.quant.linear import inference_summary, set_inference

# bf16 activations, scales and outputs: relative error of a single layer's output.
LAYER_RTOL = 2e-2


def _layer(out=48, cols=256, bits=4, group=64, symmetric=False, seed=0):
    torch.manual_seed(seed)
    w = torch.randn(out, cols)
    w[w.abs() < 0.5] = 0.0  # a sparse weight: zeros must stay zeros
    p = compute_params(w, bits, group, symmetric)
    return QuantLinear.from_codes(p, p.quantize(w), torch.randn(out))


@pytest.mark.parametrize("group,symmetric", [(32, True), (64, False), (128, True), (256, False), (192, False), (-1, True)])
def test_kernel_agrees_with_dequantized_reference(group, symmetric):
    cols = 384 if group == 192 else 256
    ql = _layer(cols=cols, group=group, symmetric=symmetric)
    codes, scales = ql.codes().clone(), ql.scales.clone()
    x = torch.randn(3, 7, cols)
    with torch.no_grad():
        ref = ql(x)
        ql.inference = "kernel"
        assert ql.inference_path() == ("kernel", None)
        got = ql(x)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    assert (got - ref).abs().max() <= LAYER_RTOL * ref.abs().max()
    assert torch.equal(ql.codes(), codes) and torch.equal(ql.scales, scales)  # stored codes unchanged
    assert ql._cache is None  # no float copy of the weight next to the packed one


def test_kernel_group_mapping():
    assert int4.kernel_group(192, 576) == 64 and int4.kernel_group(-1, 576) == 64
    assert int4.kernel_group(16, 576) is None and int4.kernel_group(-1, 100) is None


@pytest.mark.parametrize("kwargs,reason", [
    (dict(bits=8), "8-bit"), (dict(bits=3), "3-bit"), (dict(group=16), "group size 16"),
    (dict(out=40), "40 outputs")])
def test_unsupported_layers_fall_back_to_the_exact_path(kwargs, reason):
    ql = _layer(**kwargs)
    ql.inference = "kernel"
    path, why = ql.inference_path()
    assert path == "dequantize" and reason in why
    x = torch.randn(2, 256)
    with torch.no_grad():
        got = ql(x)
    ql.inference = "dequantize"
    assert torch.equal(got, ql(x))


def test_gradients_use_the_exact_path():
    ql = _layer()
    ql.inference = "kernel"
    x = torch.randn(2, 256, requires_grad=True)
    y = ql(x)
    y.sum().backward()
    ql.inference = "dequantize"
    assert torch.equal(y, ql(x)) and x.grad is not None


def test_model_logits_within_tolerance_and_summary(tiny_llama):
    model, tok = tiny_llama
    quantize_model(model, tok, "rtn", bits=4, group_size=32, symmetric=False, progress=False)
    ids = tok("The market rallied on Tuesday as investors weighed the report.", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = model(ids).logits
        summary = set_inference(model, "kernel")
        got = model(ids).logits
    assert summary == {"kernel": 14}  # 2 layers x 7 projections
    lp_ref, lp_got = ref.log_softmax(-1), got.log_softmax(-1)
    assert (lp_ref - lp_got).abs().max() < 0.05
    assert set_inference(model, "dequantize") == {"dequantize (inference='dequantize')": 14}
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)
    assert inference_summary(nn.Linear(2, 2)) == {}


def test_load_model_packed_with_kernel(tiny_llama, tmp_path):
    from slimtune.models import load_model
    from slimtune.quant import save_quantized

    model, tok = tiny_llama
    quantize_model(model, tok, "rtn", bits=4, group_size=16, symmetric=True, skip=["mlp.down_proj"], progress=False)
    save_quantized(model, tmp_path / "q", tok)
    with pytest.warns(UserWarning, match="12 quantized layers .* fall back"):
        loaded, _ = load_model(tmp_path / "q", int4="kernel")  # group 16: no kernel
    assert inference_summary(loaded) == {"dequantize (group size 16 is not a multiple of 32, 64, 128 or 256 "
                                         "dividing 64 inputs)": 12}
