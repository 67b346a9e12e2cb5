"""Generic tests over every registered sparsifier, on the tiny Llama."""

import math

import pytest
import torch

from slimtune.errors import ConfigError, DataError
from slimtune.models import linear_modules
from slimtune.sparsity import SPARSIFIERS, n_pruned, satisfies_nm, sparsify_model, validate_sparsify_args

PATTERNS = [("unstructured", 0.5), ("unstructured", 0.3), ("2:4", None), ("4:8", None)]


def _frozen(model):
    head = model.get_output_embeddings()
    return {"embed": model.get_input_embeddings().weight.detach().clone(),
            "head": head.weight.detach().clone(), "norm": model.model.norm.weight.detach().clone()}


@pytest.mark.parametrize("method", sorted(SPARSIFIERS))
@pytest.mark.parametrize("pattern,sparsity", PATTERNS)
def test_exact_sparsity_every_matrix(tiny, calib, method, pattern, sparsity):
    model, tok = tiny
    before = _frozen(model)
    report = sparsify_model(model, tok, method, sparsity=sparsity, pattern=pattern, calibration=calib,
                            progress=False)
    linears = linear_modules(model)
    targets = [n for n in report if n != "total"]
    assert len(targets) == 14  # 2 layers x q, k, v, o, gate, up, down
    matrix_scope = method == "magnitude"
    for name in targets:
        w = linears[name].weight
        if pattern == "unstructured":
            if matrix_scope:
                assert int((w == 0).sum()) == n_pruned(w.numel(), sparsity), name
            else:
                assert ((w == 0).sum(1) == n_pruned(w.shape[1], sparsity)).all(), name
        else:
            n, m = map(int, pattern.split(":"))
            assert satisfies_nm(w, n, m), name
            assert int((w == 0).sum()) == w.numel() // 2, name
        assert report[name]["shape"] == list(w.shape)
    want = 0.5 if sparsity is None else sparsity
    assert report["total"]["sparsity"] == pytest.approx(want, abs=0.01)
    after = _frozen(model)
    for key in before:  # embeddings, (tied) lm_head and norms untouched
        assert torch.equal(before[key], after[key]), key
    logits = model(torch.tensor([[5, 6, 7, 8]])).logits
    assert torch.isfinite(logits).all()


def test_sparsegpt_zero_sparsity_leaves_weights_unchanged(tiny, calib):
    model, tok = tiny
    before = {n: m.weight.detach().clone() for n, m in linear_modules(model).items()}
    sparsify_model(model, tok, "sparsegpt", sparsity=0.0, calibration=calib, progress=False)
    for n, m in linear_modules(model).items():
        assert torch.equal(m.weight, before[n]), n


def test_skip_leaves_matching_layers_dense(tiny, calib):
    model, tok = tiny
    report = sparsify_model(model, tok, "wanda", calibration=calib, skip=["lm_head", "down_proj"], progress=False)
    assert not any(n.endswith("down_proj") for n in report)
    assert "model.layers.0.mlp.down_proj" in report["total"]["left_dense"]
    assert (linear_modules(model)["model.layers.1.mlp.down_proj"].weight != 0).all()


# ---- errors before any work --------------------------------------------------------------

@pytest.mark.parametrize("kwargs,error,match", [
    ({"method": "wanda", "sparsity": 1.0}, ConfigError, r"sparsity must be .* \[0, 1\).* 1\.0"),
    ({"method": "wanda", "sparsity": -0.1}, ConfigError, r"\[0, 1\)"),
    ({"method": "wanda", "sparsity": "half"}, ConfigError, "sparsity"),
    ({"method": "obs"}, ConfigError, "unknown sparsity method 'obs'; known methods: magnitude, sparsegpt, wanda"),
    ({"method": "wanda", "pattern": "2-4"}, ConfigError, "pattern '2-4'"),
    ({"method": "wanda", "pattern": "5:4"}, ConfigError, "0 < N < M"),
    ({"method": "wanda", "pattern": "1:3"}, ConfigError, r"model\.layers\.0\.self_attn\.q_proj has 64 inputs"),
    ({"method": "magnitude", "pattern": "2:4", "sparsity": 0.6}, ConfigError, "contradicts"),
    ({"method": "sparsegpt", "options": {"dampening": 0.1}}, ConfigError, "accepted: damp, block_size"),
    ({"method": "sparsegpt", "options": {"damp": -1}}, ConfigError, "damp"),
    ({"method": "magnitude", "options": {"scope": "col"}}, ConfigError, "'matrix', 'row'"),
    ({"method": "wanda", "calibration": {"samples": 4}}, ConfigError, "unknown calibration key"),
    ({"method": "wanda", "calibration": {"n_samples": 0}}, ConfigError, "n_samples"),
    ({"method": "wanda", "calibration": {"seq_len": 4096}}, ConfigError, "context of 512"),
    ({"method": "wanda", "calibration": {"source": "one two three", "n_samples": 4, "seq_len": 32}},
     DataError, r"has \d+ tokens, but 4 samples x 31 text tokens \(after the prefix token\) need 124"),
    ({"method": "wanda", "calibration": {"source": "no-such-source"}}, DataError, "known source"),
    ({"method": "wanda", "skip": ["*"]}, ConfigError, "no linear module left"),
])
def test_errors_raised_before_any_work(tiny, kwargs, error, match):
    model, tok = tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    kwargs = {"tokenizer": tok, **kwargs}
    with pytest.raises(error, match=match):
        sparsify_model(model, progress=False, **kwargs)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_nm_pattern_defines_sparsity(tiny, calib):
    model, tok = tiny
    plan = validate_sparsify_args(model, tok, "wanda", pattern="2:4", calibration=calib)
    assert plan.sparsity == 0.5 and plan.nm == (2, 4)
    plan = validate_sparsify_args(model, tok, "magnitude", pattern="unstructured")
    assert plan.sparsity == 0.5 and plan.input_ids is None
    assert math.isclose(validate_sparsify_args(model, tok, "magnitude", sparsity=0.2).sparsity, 0.2)
