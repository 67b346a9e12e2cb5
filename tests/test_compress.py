"""The compression skeleton: a new method is one function plus one registration."""

import pytest
import torch

from slimtune import compress, quant, sparsity
from slimtune.compress import Compressed, Method, Registry
from slimtune.errors import ConfigError, SlimtuneError
from slimtune.models import linear_modules
from slimtune.quant import QUANTIZERS, quant_linears, quantize_model, rtn_quantize
from slimtune.quant.quantize import Quantizer, stacked
from slimtune.sparsity import SPARSIFIERS, sparsify_model


def test_defaults_are_defined_once():
    assert sparsity.DEFAULT_SKIP is quant.DEFAULT_SKIP is compress.DEFAULT_SKIP
    assert sparsity.DEFAULT_CALIBRATION is quant.DEFAULT_CALIBRATION is compress.DEFAULT_CALIBRATION


def test_registry():
    reg = Registry("toy", [Method("a", None, lambda w, s: w)])
    assert list(reg) == ["a"] and reg.lookup("a").name == "a"
    with pytest.raises(ConfigError, match="unknown toy method 'b'; known methods: a"):
        reg.lookup("b")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register(Method("a", None, lambda w, s: w))
    with pytest.raises(ValueError, match="stats must be None or one of sqnorm, hessian"):
        Method("c", "gradient", lambda w, s: w)
    assert {m.stats for m in SPARSIFIERS.values()} == {None, "sqnorm", "hessian"}
    assert [m.calibrated for m in QUANTIZERS.values()] == [False, True]


def test_a_new_pruner_is_one_registration(tiny_llama, news_snippet, monkeypatch):
    """A toy pruner that needs input norms: it sees every group of linears sharing an input (q/k/v,
    gate/up) with that group's statistics, its options are checked and defaulted, and its result
    goes through the stage's checks and report."""
    model, tok = tiny_llama
    seen = []

    def prune_first_columns(weights, stats, sparsity, nm, columns=1):
        seen.append((len(weights), stats.sqnorm.shape[0], columns))
        out = []
        for w in weights:
            w = w.clone()
            w[:, :int(w.shape[1] * sparsity)] = 0
            out.append(w)
        return out

    monkeypatch.setitem(SPARSIFIERS, "first", Method("first", "sqnorm", prune_first_columns,
                                                     {"columns": (1, compress.number(1, 8, integer=True))}))
    cal = {"source": news_snippet, "n_samples": 2, "seq_len": 16}
    with pytest.raises(ConfigError, match=r"option columns must be an integer in \[1, 8\], got 9"):
        sparsify_model(model, tok, "first", 0.25, calibration=cal, options={"columns": 9}, progress=False)
    report = sparsify_model(model, tok, "first", 0.25, calibration=cal, options={"columns": 2}, progress=False)
    assert sorted(seen) == sorted([(3, 64, 2), (1, 64, 2), (2, 64, 2), (1, 128, 2)] * 2)
    assert report["total"]["sparsity"] == pytest.approx(0.25) and report["total"]["options"] == {"columns": 2}
    assert (linear_modules(model)["model.layers.1.mlp.down_proj"].weight[:, :32] == 0).all()


def test_a_pruner_that_breaks_its_promise_is_caught(tiny_llama, monkeypatch):
    model, tok = tiny_llama
    monkeypatch.setitem(SPARSIFIERS, "lazy", Method("lazy", None, lambda weights, stats, sparsity, nm: weights))
    with pytest.raises(AssertionError, match="zeros where"):
        sparsify_model(model, tok, "lazy", 0.5, progress=False)


def test_a_new_quantizer_is_one_registration(tiny_llama, monkeypatch):
    model, tok = tiny_llama
    calls = []

    def rtn_mse(weight, hessian, bits, group_size, symmetric, observer):
        calls.append(hessian)
        return (*rtn_quantize(weight, bits, group_size, symmetric, observer), 1.5)

    monkeypatch.setitem(QUANTIZERS, "rtn-mse", Quantizer("rtn-mse", None, stacked(rtn_mse),
                                                         {"observer": ("mse", compress.choice("mse", "minmax"))}))
    report = quantize_model(model, tok, "rtn-mse", group_size=32, progress=False)
    assert calls == [None] * 14 and len(quant_linears(model)) == 14
    assert report["total"]["observer"] == "mse" and report["model.layers.0.mlp.up_proj"]["loss"] == 1.5


def test_a_quantizer_that_loses_a_zero_is_caught(tiny_llama, monkeypatch):
    model, tok = tiny_llama
    sparsify_model(model, tok, "magnitude", pattern="2:4", progress=False)

    def unsparse(weights, stats, **settings):
        return [Compressed(w + 1.0, None) for w in weights]

    monkeypatch.setitem(QUANTIZERS, "bad", Quantizer("bad", None, unsparse))
    with pytest.raises(SlimtuneError, match="internal error: quantizing model.layers.0.self_attn.q_proj turned "
                                            r"2048 zero weights non-zero"):
        quantize_model(model, tok, "bad", group_size=32, progress=False)


def test_calibrated_runs_use_the_stage_runner(tiny_llama, news_snippet, monkeypatch):
    """Nothing runs before validation: a bad group size stops gptq before the layer-by-layer run."""
    import slimtune.compress.run as run

    model, tok = tiny_llama
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def boom(*a, **k):
        raise AssertionError("work started before validation finished")
    monkeypatch.setattr(run, "run_layerwise", boom)
    with pytest.raises(ConfigError, match="group size 48"):
        quantize_model(model, tok, "gptq", group_size=48, calibration={"source": news_snippet})
    with pytest.raises(ConfigError, match="needs input widths divisible by 3"):
        sparsify_model(model, tok, "wanda", pattern="1:3", calibration={"source": news_snippet})
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
