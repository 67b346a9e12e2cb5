"""The one short end-to-end run on the real default model that the README's test command runs."""

import pytest
import torch

from slimtune import api
from slimtune.adapters import load_adapter
from slimtune.models import load_model

pytestmark = pytest.mark.e2e


def test_default_model_evaluate_finetune_merge(tmp_path):
    base = api.evaluate("smollm2-135m", task="polarity", split="validation", limit=6, progress=False,
                        perplexity_text="wiki", seq_len=128, max_windows=2)
    assert base["n"] == 6 and 0 <= base["acc"] <= 1
    assert 5 < base["perplexity"] < 200  # a working 135M model on Wikipedia text

    adapter = api.finetune("smollm2-135m", task="polarity", out=tmp_path / "adapter", rank=4, alpha=8,
                           targets=["q_proj", "v_proj"], max_steps=2, batch_size=4, max_length=64,
                           progress=False)
    merged = api.merge(adapter, out=tmp_path / "merged")

    model, tok = load_model("smollm2-135m")
    load_adapter(model, adapter)
    merged_model, _ = load_model(merged)
    ids = tok(["Review: a gorgeous, witty film\nSentiment:"], return_tensors="pt")
    with torch.no_grad():
        merged_logits, adapted_logits = merged_model(**ids).logits, model(**ids).logits
    # fp32 rounding of W + s·B·A, carried through 30 layers: ~1e-3 on logits of magnitude ~20
    torch.testing.assert_close(merged_logits, adapted_logits, rtol=0, atol=5e-3)
    assert torch.equal(merged_logits.argmax(-1), adapted_logits.argmax(-1))
    after = api.evaluate(merged, task="polarity", split="validation", limit=6, progress=False)
    assert after["n"] == 6
