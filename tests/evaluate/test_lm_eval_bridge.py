"""slimtune's evaluators against lm-eval's on the same examples and prompts (offline)."""

import json
import os
import sys

import numpy as np
import pytest
import torch
import yaml

from slimtune.data import Example, Task, load_task
from slimtune.errors import ConfigError, DataError
from slimtune.evaluate import generation_accuracy, multiple_choice
from slimtune.evaluate.lm_eval_bridge import mc_docs, run_lm_eval

# lm-eval is in the dev extras the README's test command installs: in CI a missing lm-eval is a
# failure, not a skip (these are the only checks against the reference implementation).
if os.environ.get("CI"):
    import lm_eval  # noqa: F401
else:
    pytest.importorskip("lm_eval")


def _assert_agree(ours: dict, theirs: dict):
    assert theirs["n"] == ours["n"]
    assert theirs["acc"] == pytest.approx(ours["acc"])
    assert theirs["acc_norm"] == pytest.approx(ours["acc_norm"])
    # per-example, per-choice log-likelihoods from lm-eval's logged samples
    assert np.allclose(np.concatenate(theirs["loglikelihoods"]), np.concatenate(ours["loglikelihoods"]),
                       atol=1e-4)
    # the same answer for every example, and lm-eval's own per-example verdicts
    assert theirs["predictions"] == ours["predictions"]
    assert theirs["predictions_norm"] == ours["predictions_norm"]
    assert theirs["correct"] == [p == y for p, y in zip(ours["predictions"], ours["labels"])]
    assert theirs["correct_norm"] == [p == y for p, y in zip(ours["predictions_norm"], ours["labels"])]


def _ours(model, tok, examples, **kw):
    return multiple_choice(model, tok, examples, progress=False, **kw) | {"labels": [ex.label for ex in examples]}


def test_polarity_agrees_with_lm_eval(tiny, tiny_path, tmp_path):
    """Given a directory, run_lm_eval loads the model with slimtune's loader; the task file uses
    lm-eval's standard target_delimiter " " and unspaced choices."""
    model, tok = tiny
    task = load_task("polarity")
    ours = _ours(model, tok, task.test[:20], batch_size=8)
    theirs = run_lm_eval(str(tiny_path), task, limit=20, batch_size=8, work_dir=tmp_path)
    _assert_agree(ours, theirs)
    config = yaml.safe_load((tmp_path / "slimtune_polarity_test.yaml").read_text())
    assert config["target_delimiter"] == " "
    doc = json.loads((tmp_path / "slimtune_polarity_test.jsonl").read_text().splitlines()[0])
    assert doc["choices"] == ["negative", "positive"] and doc["prompt"] == task.test[0].prompt



def test_acc_norm_agrees_on_an_int4_model_with_adapters(int4_lora):
    """The in-memory model (QuantLinear + LoraLinear, which lm-eval could not reload from a
    path) on BIG-bench social_iqa, whose choices differ in length: acc_norm's denominator is
    exercised (dividing by the length with the delimiter picks differently on some examples)."""
    model, tok = int4_lora
    task = load_task("bigbench:social_iqa")
    examples = task.test[:24]
    ours = _ours(model, tok, examples, batch_size=4)
    with_delimiter = [int(np.argmax(np.array(ll) / [len(c) for c in ex.choices]))
                      for ll, ex in zip(ours["loglikelihoods"], examples)]
    assert with_delimiter != ours["predictions_norm"]
    theirs = run_lm_eval(model, task, limit=24, batch_size=4, tokenizer=tok)
    _assert_agree(ours, theirs)


def test_acc_norm_and_bos_agree_with_lm_eval(tiny_bos):
    """Unspaced choices after a prompt ending in a space (the space moves into target_delimiter),
    choices of different lengths, and a tokenizer that prepends BOS."""
    model, tok = tiny_bos
    pol = load_task("polarity").test[:6]
    extra = [Example(ex.prompt + " ", ("good", "bad, really bad", "so-so"), ex.label) for ex in pol]
    examples = pol + extra
    task = Task("mixed", "multiple_choice", [], [], examples)
    ours = _ours(model, tok, examples, batch_size=4)
    theirs = run_lm_eval(model, task, batch_size=4, tokenizer=tok)
    _assert_agree(ours, theirs)
    assert model.training is False


def test_delimiters_written_for_lm_eval():
    docs, delim = mc_docs([Example("Q:", (" yes", " no"), 0), Example("Q: ", ("a b", "c"), 1)])
    assert delim == " " and [(d["prompt"], d["choices"]) for d in docs] == [("Q:", ["yes", "no"]), ("Q:", ["a b", "c"])]
    # no choice has a leading space and a prompt does not end in one: nothing to move
    docs, delim = mc_docs([Example("Pick:\n", ("A", "BB"), 0)])
    assert delim == "" and docs[0]["choices"] == ["A", "BB"] and docs[0]["prompt"] == "Pick:\n"
    with pytest.raises(DataError, match=r"example 1 cannot be written with lm-eval's target_delimiter ' '"):
        mc_docs([Example("Q:", (" yes", " no"), 0), Example("Q:", (" yes", "no"), 0)])


def test_generation_agrees_with_lm_eval(tiny, tiny_path, news):
    model, tok = tiny
    lines = [line for line in news.split("\n") if line][:4]
    examples = [Example(line[: 30 + 11 * i], target=str(i)) for i, line in enumerate(lines)]
    task = Task("toy_gen", "generation", [], [], examples, max_new_tokens=8, stop=("\n\n",),
                score=lambda pred, ex: float(len(pred) % 2 == 0))
    ours = generation_accuracy(model, tok, task, examples, batch_size=2, progress=False, samples=4)
    theirs = run_lm_eval(model, task, batch_size=2, tokenizer=tok)
    assert theirs["predictions"] == [s["prediction"] for s in ours["samples"]]
    assert theirs["accuracy"] == ours["accuracy"] and theirs["n"] == ours["n"]


def test_missing_lm_eval_is_a_config_error(monkeypatch, tiny_path):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # makes `import lm_eval` fail
    with pytest.raises(ConfigError, match=r"pip install slimtune\[lm-eval\]"):
        run_lm_eval(str(tiny_path), load_task("polarity"), limit=2)


def test_in_memory_model_needs_its_tokenizer(tiny):
    model, _ = tiny
    with pytest.raises(ConfigError, match="needs the tokenizer"):
        run_lm_eval(model, load_task("polarity"), limit=2)


@pytest.mark.slow
def test_polarity_agrees_with_lm_eval_on_the_default_model():
    from slimtune.models import load_model

    model, tok = load_model("smollm2-135m")
    task = load_task("bigbench:social_iqa")
    ours = _ours(model, tok, task.test[:20], batch_size=8)
    theirs = run_lm_eval(model, task, limit=20, batch_size=8, tokenizer=tok)
    _assert_agree(ours, theirs)
