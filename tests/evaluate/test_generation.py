import pytest
import torch

from slimtune.data import Example, Task
from slimtune.errors import ConfigError, DataError
from slimtune.evaluate import generation_accuracy
from slimtune.evaluate.generation import cut_at_stop, generate


@pytest.fixture(scope="module")
def prompts(news):
    # prompts of different lengths, so batches need real left padding
    lines = [line for line in news.split("\n") if line][:6]
    return [line[: 20 + 9 * i] for i, line in enumerate(lines)]


def _naive_greedy(model, tok, prompt, max_new_tokens, stop):
    ids = tok.encode(prompt)
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
    return cut_at_stop(tok.decode(new, skip_special_tokens=True), stop)


def test_cut_at_stop():
    assert cut_at_stop("a b\n\nc", ("\n\n",)) == "a b"
    assert cut_at_stop("x.y;z", (";", ".")) == "x"  # the earliest stop wins
    assert cut_at_stop("abc", ()) == "abc"


def test_generate_matches_naive_greedy(tiny, prompts):
    model, tok = tiny
    uncut = generate(model, tok, prompts, 10, (), batch_size=8, progress=False)
    stop = ("\n\n", uncut[1][2:5])  # a string the model does produce, so some outputs get cut
    reference = [_naive_greedy(model, tok, p, 10, stop) for p in prompts]
    assert any(len(r) < len(u) for r, u in zip(reference, uncut))
    for batch_size in (1, 4):
        assert generate(model, tok, prompts, 10, stop, batch_size=batch_size, progress=False) == reference
    assert tok.padding_side == "right"  # restored


def test_generation_accuracy_with_toy_scorer(tiny, prompts):
    model, tok = tiny
    reference = generate(model, tok, prompts, 8, ("\n",), batch_size=1, progress=False)
    # gold = the model's own output for even examples, something else for odd ones
    examples = [Example(p, answer="x", target=ref if i % 2 == 0 else ref + "#")
                for i, (p, ref) in enumerate(zip(prompts, reference))]
    task = Task("toy", "generation", [], [], examples, score=lambda pred, ex: float(pred == ex.target),
                max_new_tokens=8, stop=("\n",))
    r = generation_accuracy(model, tok, task, examples, batch_size=4, progress=False, samples=2)
    assert r["n"] == len(examples)
    assert r["accuracy"] == pytest.approx(0.5)
    assert [s["prediction"] for s in r["samples"]] == reference[:2]


def test_errors(tiny):
    model, tok = tiny
    task = Task("toy", "generation", [], [], [], score=lambda p, ex: 1.0)
    with pytest.raises(DataError, match="no examples"):
        generation_accuracy(model, tok, task, [], progress=False)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generation_accuracy(model, tok, task, [Example("a", target="b")], max_new_tokens=0, progress=False)
