"""Wanda on the real default model (SmolLM2-135M): run on demand with `pytest -m slow`."""

import math

import pytest
import torch


@pytest.mark.slow
def test_wanda_half_on_default_model_exact_and_finite():
    from slimtune.data import load_text
    from slimtune.evaluate.perplexity import perplexity
    from slimtune.models import linear_modules, load_model
    from slimtune.sparsity import sparsify_model

    model, tok = load_model("smollm2-135m")
    embed = model.get_input_embeddings().weight.detach().clone()
    report = sparsify_model(model, tok, "wanda", sparsity=0.5,
                            calibration={"source": "news", "n_samples": 4, "seq_len": 128}, progress=False)
    linears = linear_modules(model)
    pruned = [n for n in report if n != "total"]
    assert len(pruned) == 30 * 7
    for name in pruned:
        w = linears[name].weight
        # The GGUF-derived weights hold no exact zeros, so every row has exactly in/2 zeros.
        assert ((w == 0).sum(1) == w.shape[1] // 2).all(), name
    assert report["total"]["sparsity"] == 0.5
    assert torch.equal(model.get_input_embeddings().weight, embed)
    ppl = perplexity(model, tok, load_text("wiki"), seq_len=128, max_windows=4, progress=False)["perplexity"]
    assert math.isfinite(ppl) and ppl < 1000
