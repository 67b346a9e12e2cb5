import numpy as np
import pytest
import torch

from slimtune.data import Example, load_task
from slimtune.errors import ConfigError, DataError
from slimtune.evaluate import multiple_choice
from slimtune.evaluate import choice as choice_mod
from slimtune.evaluate.choice import choice_length, encode_pair, plan_scoring
from slimtune.evaluate.packed import packed_mask, supports_packing

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


@pytest.mark.parametrize("packed", [None, False])
@pytest.mark.parametrize("which", ["tiny", "tiny_bos"])
def test_matches_hand_computed_reference(which, packed, request):
    model, tok = request.getfixturevalue(which)
    r = multiple_choice(model, tok, EXAMPLES, batch_size=3, progress=False, packed=packed)
    acc, acc_norm = [], []
    for ex, got in zip(EXAMPLES, r["loglikelihoods"]):
        ll = [_reference_ll(model, tok, ex.prompt, c) for c in ex.choices]
        assert got == pytest.approx(ll, abs=1e-4)
        acc.append(int(np.argmax(ll)) == ex.label)
        # lm-eval's acc_norm divides by the choice's length in characters, without the delimiter
        # (slimtune's one leading space; lm-eval keeps it in target_delimiter)
        acc_norm.append(int(np.argmax([x / len(c.removeprefix(" ")) for x, c in zip(ll, ex.choices)])) == ex.label)
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
    with pytest.raises(DataError, match=r"choice ' ' of example 0 is empty after its delimiter"):
        multiple_choice(model, tok, [Example("x", (" a", " "), 0)], progress=False)


# ---- acc_norm's denominator

def test_acc_norm_divides_by_the_choice_without_its_delimiter(tiny, monkeypatch):
    """lm-eval scores context + " " + "bb" and divides by len("bb"); slimtune's choice " bb"
    carries the delimiter, which must not count."""
    model, tok = tiny
    assert [choice_length(c) for c in (" bb", "bb", "  bb", "\nbb")] == [2, 2, 3, 3]
    ex = Example("Q:", (" a", " bb"), 1)
    monkeypatch.setattr(choice_mod, "_score", lambda *a, **k: [[-2.0, -3.9]])
    r = multiple_choice(model, tok, [ex], progress=False)
    # -2/1 < -3.9/2 picks " bb"; dividing by len(" a"), len(" bb") would pick " a" (-1 > -1.3)
    assert r["predictions"] == [0] and r["predictions_norm"] == [1]
    assert r["acc"] == 0.0 and r["acc_norm"] == 1.0


# ---- packed scoring: all choices of an example in one sequence

# 2 to 5 choices of different lengths (1 to ~8 tokens), one-token choices, a choice that merges
# with the prompt's last token when tokenized together ("The governm" + "ent said"), prompts of
# very different lengths so that batches are padded.
PACK_EXAMPLES = EXAMPLES + [
    Example("The governm", ("ent said", " is", "ental"), 0),
    Example("A long prompt about the weather in the city, which was rainy and cold all week,"
            " so people stayed home. Tomorrow will be", (" sunny", " rainy again, with more cold wind", " x",
                                                        " cold", " warm and bright all day"), 3),
    Example("Q: 2+2?\nA:", (" 4", " 5"), 0),
]





@pytest.mark.parametrize("which", ["tiny", "tiny_bos", "int4_lora"])
def test_packed_equals_one_forward_per_pair(which, request):
    model, tok = request.getfixturevalue(which)
    assert supports_packing(model)
    plan = plan_scoring(model, tok, PACK_EXAMPLES)
    assert plan.packed == list(range(len(PACK_EXAMPLES))) and plan.pairs == []  # nothing fell back
    ref = multiple_choice(model, tok, PACK_EXAMPLES, batch_size=4, progress=False, packed=False)
    for b in (1, 3, 16):
        got = multiple_choice(model, tok, PACK_EXAMPLES, batch_size=b, progress=False, packed=True)
        for g, w in zip(got["loglikelihoods"], ref["loglikelihoods"]):
            assert g == pytest.approx(w, abs=1e-4)
        assert got["predictions"] == ref["predictions"] and got["predictions_norm"] == ref["predictions_norm"]


def test_packed_mask_and_positions():
    from slimtune.evaluate.packed import pack_row

    row = pack_row(0, [10, 11, 12], [[20, 21, 22], [30], [40, 41]])
    assert row.ids == [10, 11, 12, 20, 21, 40]        # last token of each choice is only a target
    assert row.positions == [0, 1, 2, 3, 4, 3]        # every choice restarts after the prompt
    assert row.segments == [0, 0, 0, 1, 1, 3]
    assert row.sources == [2, 3, 4, 2, 2, 5]          # the prompt's last position predicts each first token
    assert row.targets == [20, 21, 22, 30, 40, 41] and row.owners == [0, 0, 0, 1, 2, 2]
    seg = torch.tensor([row.segments + [-1]])
    m = packed_mask(seg, torch.float32, additive=False)[0, 0].int()
    assert m.tolist() == [[1, 0, 0, 0, 0, 0, 0],
                          [1, 1, 0, 0, 0, 0, 0],
                          [1, 1, 1, 0, 0, 0, 0],
                          [1, 1, 1, 1, 0, 0, 0],
                          [1, 1, 1, 1, 1, 0, 0],
                          [1, 1, 1, 0, 0, 1, 0],  # choice 3 sees the prompt, not choice 1
                          [1, 1, 1, 0, 0, 0, 1]]  # padding: prompt and itself, never an empty row
    add = packed_mask(seg, torch.float32, additive=True)[0, 0]
    assert ((add == 0) == m.bool()).all() and add.min() == torch.finfo(torch.float32).min


def test_truncated_examples_fall_back_to_pairs(tiny):
    """An example whose (prompt, choice) needs left truncation is scored pair by pair, the rest
    packed, and all of it equals the pair path."""
    model, tok = tiny
    examples = [Example("word " * 100 + "end:", (" yes", " no, never"), 0)] + EXAMPLES
    plan = plan_scoring(model, tok, examples, max_length=40)  # the other examples need at most 36
    assert plan.pairs == [(0, 0), (0, 1)] and plan.packed == [1, 2, 3, 4]
    got = multiple_choice(model, tok, examples, max_length=40, batch_size=2, progress=False)
    ref = multiple_choice(model, tok, examples, max_length=40, batch_size=2, progress=False, packed=False)
    assert np.allclose(np.concatenate(got["loglikelihoods"]), np.concatenate(ref["loglikelihoods"]), atol=1e-4)


def test_eager_attention_packs_with_an_additive_mask(tiny_path, tiny):
    from transformers import AutoModelForCausalLM

    _, tok = tiny
    eager = AutoModelForCausalLM.from_pretrained(tiny_path, attn_implementation="eager").eval()
    assert eager.config._attn_implementation == "eager" and supports_packing(eager)
    got = multiple_choice(eager, tok, PACK_EXAMPLES, batch_size=3, progress=False)
    ref = multiple_choice(eager, tok, PACK_EXAMPLES, batch_size=3, progress=False, packed=False)
    assert np.allclose(np.concatenate(got["loglikelihoods"]), np.concatenate(ref["loglikelihoods"]), atol=1e-4)


class _Wrapped(torch.nn.Module):
    """A model of unknown architecture: takes ids and a 2D mask, returns .logits."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config = model, model.config

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep)


def test_models_that_cannot_pack_are_scored_pair_by_pair(tiny, tmp_path):
    from slimtune.models import build_tiny_model, load_model

    model, tok = tiny
    wrapped = _Wrapped(model)
    assert not supports_packing(wrapped)
    assert plan_scoring(wrapped, tok, EXAMPLES).packed == []
    got = multiple_choice(wrapped, tok, EXAMPLES, progress=False)
    ref = multiple_choice(model, tok, EXAMPLES, progress=False)
    assert np.allclose(np.concatenate(got["loglikelihoods"]), np.concatenate(ref["loglikelihoods"]), atol=1e-4)
    with pytest.raises(ConfigError, match="cannot score packed choices"):
        multiple_choice(wrapped, tok, EXAMPLES, progress=False, packed=True)
    bert, _ = load_model(build_tiny_model(tmp_path / "bert", arch="bert"))
    assert not supports_packing(bert)


@pytest.mark.slow
def test_packed_equals_pairs_on_the_default_model():
    from slimtune.models import load_model

    model, tok = load_model("smollm2-135m")
    examples = load_task("bigbench:social_iqa").test[:12]
    got = multiple_choice(model, tok, examples, batch_size=4, progress=False)
    ref = multiple_choice(model, tok, examples, batch_size=4, progress=False, packed=False)
    assert np.allclose(np.concatenate(got["loglikelihoods"]), np.concatenate(ref["loglikelihoods"]), atol=1e-3)
    assert got["predictions_norm"] == ref["predictions_norm"]
