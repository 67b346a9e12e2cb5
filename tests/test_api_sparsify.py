import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from slimtune import api
from slimtune.cli import main
from slimtune.errors import ConfigError


def test_sparsify_writes_loadable_model_with_exact_zeros(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "sparse"
    assert main(["sparsify", "--model", str(tiny_llama_dir), "--method", "wanda", "--sparsity", "0.5",
                 "--samples", "4", "--seq-len", "64", "--out", str(out)]) == 0
    assert "total over 73,728 prunable weights: 50.00% zero" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(out)  # plain transformers loads it
    for name, module in model.named_modules():
        if name.endswith(("q_proj", "down_proj")):
            assert ((module.weight == 0).sum(1) == module.in_features // 2).all(), name
    dense = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert torch.equal(model.model.embed_tokens.weight, dense.model.embed_tokens.weight)
    manifest = json.loads((out / "slimtune.json").read_text())
    assert manifest["stage"] == "sparsify" and manifest["metrics"]["sparsity"] == 0.5
    assert manifest["metrics"]["layers"]["model.layers.1.mlp.up_proj"]["sparsity"] == 0.5
    assert main(["inspect", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["total"]["sparsity"] == 0.5
    assert summary["matrices"]["model.embed_tokens.weight"]["prunable"] is False


def test_sparsify_two_four_with_sparsegpt(tiny_llama_dir, tmp_path):
    out = api.sparsify(tiny_llama_dir, out=tmp_path / "s24", method="sparsegpt", pattern="2:4",
                       calibration={"n_samples": 4, "seq_len": 64}, progress=False)
    model = AutoModelForCausalLM.from_pretrained(out)
    w = model.model.layers[0].mlp.gate_proj.weight
    assert ((w.reshape(w.shape[0], -1, 4) == 0).sum(-1) == 2).all()


@pytest.mark.parametrize("kwargs,message", [
    ({"method": "random"}, "unknown sparsity method 'random'; known methods: magnitude, sparsegpt, wanda"),
    ({"sparsity": 1.0}, r"sparsity: Input should be less than 1 \(got 1.0\)"),
    ({"pattern": "2:5"}, "needs input widths divisible by 5"),
    ({"pattern": "two-four"}, "pattern"),
])
def test_bad_input_is_rejected_before_work(tiny_llama_dir, tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        api.sparsify(tiny_llama_dir, out=tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_calibration_longer_than_text_is_rejected(tiny_llama_dir, tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("only a few words here. " * 5)
    with pytest.raises(Exception, match="too short|tokens"):
        api.sparsify(tiny_llama_dir, out=tmp_path / "x", calibration={"source": str(text), "n_samples": 8, "seq_len": 256})
    assert not (tmp_path / "x").exists()
