"""RTN INT4 on the real default model (SmolLM2-135M): run on demand with `pytest -m slow`."""

import math

import pytest


@pytest.mark.slow
def test_rtn_g64_on_default_model_close_to_dense(tmp_path):
    from slimtune.data import load_text
    from slimtune.evaluate.perplexity import perplexity
    from slimtune.models import load_model
    from slimtune.quant import load_quantized, quant_linears, quantize_model, save_quantized

    model, tok = load_model("smollm2-135m")
    text = load_text("wiki")
    dense = perplexity(model, tok, text, seq_len=128, max_windows=4, progress=False)["perplexity"]
    report = quantize_model(model, tok, "rtn", bits=4, group_size=64, progress=False)
    assert report["total"]["layers"] == 30 * 7
    ppl = perplexity(model, tok, text, seq_len=128, max_windows=4, progress=False)["perplexity"]
    assert math.isfinite(ppl) and dense <= ppl * 1.02 and ppl < dense * 1.5
    back, _ = load_quantized(save_quantized(model, tmp_path / "q", tok))
    assert all(a.params == b.params for a, b in zip(quant_linears(model).values(), quant_linears(back).values()))
