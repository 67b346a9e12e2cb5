import pytest
import torch

from slimtune.errors import ConfigError
from slimtune.models import linear_modules
from slimtune.quant import QUANTIZERS, QuantLinear, load_quantized, quant_linears, quantize_model, save_quantized


def _logits(model, seed=0):
    ids = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("method", sorted(QUANTIZERS))
def test_quantize_model_replaces_every_target(qtiny, qcalib, method):
    model, tok = qtiny
    before = {n: m.weight.detach().clone() for n, m in linear_modules(model).items()}
    report = quantize_model(model, tok, method, 4, 32, False, calibration=qcalib, progress=False)
    qls = quant_linears(model)
    assert set(qls) == set(before) and len(qls) == 14
    assert report["total"]["method"] == method and report["total"]["layers"] == 14
    assert report["total"]["bytes_per_weight"] == pytest.approx(0.5 + 5 / 32, abs=1e-4)  # asymmetric g32
    dequantized_zeros = sum(int((m.dequantized_weight() == 0).sum()) for m in qls.values())
    assert report["total"]["zeros_after"] == dequantized_zeros > report["total"]["zeros"] == 0
    for name, m in qls.items():
        err = (m.dequantized_weight() - before[name]).abs()
        # RTN moves a weight by at most half a step; GPTQ also compensates earlier errors.
        assert float(err.max()) <= float(m.scales.max()) * (0.5 + 1e-5 if method == "rtn" else 4)
    assert torch.isfinite(_logits(model)).all()


def test_gptq_on_sparse_model_keeps_every_zero(qtiny, qcalib):
    model, tok = qtiny
    for lin in linear_modules(model).values():                    # 50% magnitude-pruned rows
        w = lin.weight.data
        w[w.abs() < w.abs().median(dim=1, keepdim=True).values] = 0
    zeros = {n: m.weight.detach() == 0 for n, m in linear_modules(model).items()}
    total = sum(int(z.sum()) for z in zeros.values())
    for act_order in (False, True):
        m2 = __import__("copy").deepcopy(model)
        report = quantize_model(m2, tok, "gptq", 4, 32, True, act_order=act_order,
                                calibration=qcalib, progress=False)
        assert report["total"]["zeros"] == total
        for name, m in quant_linears(m2).items():
            assert (m.dequantized_weight()[zeros[name]] == 0).all(), name


def test_errors_before_any_work(qtiny, qcalib, monkeypatch):
    import slimtune.quant.quantize as qq

    model, tok = qtiny
    before = _logits(model)

    def boom(*a, **k):
        raise AssertionError("work started before validation finished")
    monkeypatch.setattr(qq, "run_layerwise", boom)
    monkeypatch.setattr(qq, "rtn_quantize", boom)
    with pytest.raises(ConfigError, match="bits=5 is not supported; choose from 2, 3, 4, 8"):
        quantize_model(model, tok, "gptq", bits=5, calibration=qcalib)
    with pytest.raises(ConfigError, match=r"group size 48 does not divide model\.layers\.0\.self_attn\.q_proj's 64 "
                                          r"inputs; group sizes that divide every quantized layer: 2, 4, 8, 16, 32, 64"):
        quantize_model(model, tok, "gptq", group_size=48, calibration=qcalib)
    with pytest.raises(ConfigError, match="unknown quantization method 'awq'; known methods: gptq, rtn"):
        quantize_model(model, tok, "awq")
    with pytest.raises(ConfigError, match="no linear module left to quantize"):
        quantize_model(model, tok, "rtn", skip=["*"])
    with pytest.raises(ConfigError, match=r"unknown option\(s\) act_order for method 'rtn'; accepted: observer"):
        quantize_model(model, tok, "rtn", act_order=True)
    with pytest.raises(ConfigError, match="option observer='imatrix' is not valid; choose from 'minmax', 'mse'"):
        quantize_model(model, tok, "rtn", observer="imatrix")
    with pytest.raises(ConfigError, match="option observer='max' is not valid; choose from 'minmax', 'mse', 'imatrix'"):
        quantize_model(model, tok, "gptq", observer="max", calibration=qcalib)
    with pytest.raises(ConfigError, match=r"option damp must be a number in \[0.0, 1000000.0\], got -1"):
        quantize_model(model, tok, "gptq", damp=-1, calibration=qcalib)
    with pytest.raises(ConfigError, match="unknown calibration key"):
        quantize_model(model, tok, "gptq", calibration={"samples": 3})
    assert not quant_linears(model) and torch.equal(_logits(model), before)


def test_no_linear_layers_is_an_error():
    with pytest.raises(ConfigError, match="no linear module left to quantize"):
        quantize_model(torch.nn.Sequential(torch.nn.ReLU()), None, "rtn")


@pytest.mark.parametrize("method,symmetric,group_size,bits", [
    ("rtn", True, 32, 4), ("gptq", False, 32, 4), ("rtn", False, -1, 4), ("rtn", True, -1, 8),
    ("rtn", False, 16, 3), ("rtn", False, 32, 2)])
def test_save_and_load_quantized_are_exact(qtiny, qcalib, tmp_path, method, symmetric, group_size, bits):
    model, tok = qtiny
    quantize_model(model, tok, method, bits, group_size, symmetric, calibration=qcalib, progress=False)
    ref = _logits(model)
    out = save_quantized(model, tmp_path / "q", tok)
    back, tok2 = load_quantized(out)
    assert tok2 is not None
    a, b = quant_linears(model), quant_linears(back)
    assert list(a) == list(b)
    for name in a:
        assert a[name].params == b[name].params and a[name].params.to_bytes() == b[name].params.to_bytes()
        assert torch.equal(a[name].qweight, b[name].qweight)
    assert torch.equal(_logits(back), ref)


@pytest.mark.parametrize("symmetric,group_size,bits", [(True, 32, 4), (False, 32, 4), (False, -1, 4),
                                                       (False, 16, 3)])
def test_export_loads_with_plain_transformers(qtiny, qcalib, tmp_path, symmetric, group_size, bits):
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM

    model, tok = qtiny
    quantize_model(model, tok, "gptq", bits, group_size, symmetric, calibration=qcalib, progress=False)
    ref = _logits(model)
    out = save_quantized(model, tmp_path / "q", tok)
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(_logits(plain), ref)
    # Packed on disk: the int32 words hold bits/8 bytes per weight.
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        packed = f.get_tensor("model.layers.0.mlp.down_proj.weight_packed")
    assert packed.dtype == torch.int32 and packed.numel() * 4 == 64 * 128 * bits // 8


def test_quantizing_twice_is_an_error(qtiny):
    model, tok = qtiny
    quantize_model(model, tok, "rtn", progress=False, group_size=32)
    assert isinstance(model.get_submodule("model.layers.0.self_attn.q_proj"), QuantLinear)
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_model(model, tok, "rtn")
