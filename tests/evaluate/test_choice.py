import numpy as np
import pytest
import torch

from slimtune.data import Example
from slimtune.errors import DataError
from slimtune.evaluate import multiple_choice
from slimtune.evaluate.choice import encode_pair

# Choices of different lengths (so acc_norm can differ from acc), a prompt with a trailing
# space (which lm-eval moves into the continuation) and one ending in a newline.
EXAMPLES = [
    Example("Review: a gorgeous, witty film\nSentiment:", (" negative", " positive", " meh"), 1),
    Example("Question: is the sky blue?\nAnswer: ", ("yes", "no, it is green on most days"), 0),
    Example("The capital of France is", (" Paris", " a large city in Germany", " Rome"), 2),
    Example("Pick one:\n", ("A", "BB", "CCC"), 1),
]


def _reference_ll(model, tok, prompt, choice):
    """Naive lm-eval definition: trailing space moves to the continuation; tokens of the whole
    string after the context's tokens are the continuation; one unpadded forward."""
    ctx = prompt.rstrip()
    cont = prompt[len(ctx):] + choice
    whole, ctx_ids = tok.encode(ctx + cont), tok.encode(ctx)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
    return sum(logp[t - 1, whole[t]].item() for t in range(len(ctx_ids), len(whole)))


@pytest.mark.parametrize("which", ["tiny", "tiny_bos"])
def test_matches_hand_computed_reference(which, request):
    model, tok = request.getfixturevalue(which)
    r = multiple_choice(model, tok, EXAMPLES, batch_size=3, progress=False)
    acc, acc_norm = [], []
    for ex, got in zip(EXAMPLES, r["loglikelihoods"]):
        ll = [_reference_ll(model, tok, ex.prompt, c) for c in ex.choices]
        assert got == pytest.approx(ll, abs=1e-4)
        acc.append(int(np.argmax(ll)) == ex.label)
        # lm-eval's acc_norm divides by the choice's length in characters
        acc_norm.append(int(np.argmax([x / len(c) for x, c in zip(ll, ex.choices)])) == ex.label)
    assert r["acc"] == np.mean(acc) and r["acc_norm"] == np.mean(acc_norm)
    assert r["n"] == len(EXAMPLES) and len(r["predictions"]) == len(EXAMPLES)


def test_encode_pair_moves_trailing_space_and_respects_bos(tiny, tiny_bos):
    _, tok = tiny
    ctx, cont = encode_pair(tok, "Answer: ", "yes")
    assert ctx == tok.encode("Answer:") and ctx + cont == tok.encode("Answer: yes")
    _, btok = tiny_bos
    ctx, cont = encode_pair(btok, "Answer: ", "yes")
    assert ctx[0] == btok.bos_token_id and btok.bos_token_id not in cont
    assert ctx + cont == btok.encode("Answer: yes")
    # a prompt already starting with BOS gets no second one
    ctx, _ = encode_pair(btok, "<s>Answer:", " yes")
    assert ctx.count(btok.bos_token_id) == 1
    # an empty prompt is conditioned on the prefix token
    ctx, cont = encode_pair(tok, "", " yes")
    assert ctx == [tok.bos_token_id] and cont == tok.encode(" yes", add_special_tokens=False)


def test_batch_size_invariance(tiny):
    model, tok = tiny
    runs = [multiple_choice(model, tok, EXAMPLES, batch_size=b, progress=False) for b in (1, 2, 5, 16)]
    for r in runs[1:]:
        assert r["predictions"] == runs[0]["predictions"]
        assert r["predictions_norm"] == runs[0]["predictions_norm"]
        assert np.allclose(np.concatenate(r["loglikelihoods"]), np.concatenate(runs[0]["loglikelihoods"]), atol=1e-4)


def test_left_truncation_keeps_the_continuation(tiny):
    model, tok = tiny
    ex = Example("word " * 100 + "end:", (" yes", " no"), 0)
    r = multiple_choice(model, tok, [ex], max_length=16, progress=False)
    assert all(np.isfinite(r["loglikelihoods"][0]))


def test_errors(tiny):
    model, tok = tiny
    with pytest.raises(DataError, match="no examples"):
        multiple_choice(model, tok, [], progress=False)
    with pytest.raises(DataError, match="valid label"):
        multiple_choice(model, tok, [Example("x", (" a", " b"), 2)], progress=False)
    with pytest.raises(DataError, match="valid label"):
        multiple_choice(model, tok, [Example("x", answer="y", target="y")], progress=False)
