import json

import pytest

from slimtune.data import Example, Task, load_task
from slimtune.errors import ConfigError
from slimtune.evaluate import evaluate_model, multiple_choice, perplexity


def test_task_and_perplexity_in_one_json_dict(tiny, news):
    model, tok = tiny
    task = load_task("polarity")
    r = evaluate_model(model, tok, task, limit=6, text=news, seq_len=64, max_windows=2, progress=False)
    json.dumps(r)  # serialisable as is
    assert (r["task"], r["split"], r["n"]) == ("polarity", "test", 6)
    mc = multiple_choice(model, tok, task.test[:6], progress=False)
    assert (r["acc"], r["acc_norm"]) == (mc["acc"], mc["acc_norm"])
    ppl = perplexity(model, tok, news, seq_len=64, max_windows=2, progress=False)
    assert r["perplexity"] == pytest.approx(ppl["perplexity"], rel=1e-6)
    assert r["perplexity_tokens"] == ppl["tokens_scored"] == 2 * 64  # every token, after the prefix token


def test_task_by_name_and_generation(tiny):
    model, tok = tiny
    assert evaluate_model(model, tok, "polarity", split="validation", limit=3, progress=False)["n"] == 3
    task = Task("toy", "generation", [], [], [Example("Hello", target="x")] * 3,
                score=lambda p, ex: 1.0, max_new_tokens=4)
    r = evaluate_model(model, tok, task, progress=False)
    json.dumps(r)
    assert r["accuracy"] == 1.0 and r["n"] == 3 and "perplexity" not in r


def test_needs_something_to_do(tiny):
    with pytest.raises(ConfigError, match="task, a text"):
        evaluate_model(*tiny)
