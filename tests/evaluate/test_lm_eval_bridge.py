"""slimtune's evaluators against lm-eval's on the same examples and prompts (offline)."""

import sys

import numpy as np
import pytest

from slimtune.data import Example, Task, load_task
from slimtune.errors import ConfigError
from slimtune.evaluate import generation_accuracy, multiple_choice
from slimtune.evaluate.lm_eval_bridge import run_lm_eval

pytest.importorskip("lm_eval")


def _assert_agree(ours: dict, theirs: dict):
    assert theirs["n"] == ours["n"]
    assert theirs["acc"] == pytest.approx(ours["acc"])
    assert theirs["acc_norm"] == pytest.approx(ours["acc_norm"])
    # per-example, per-choice log-likelihoods from lm-eval's logged samples
    assert np.allclose(np.concatenate(theirs["loglikelihoods"]), np.concatenate(ours["loglikelihoods"]),
                       atol=1e-4)


def test_polarity_agrees_with_lm_eval(tiny, tiny_path, tmp_path):
    model, tok = tiny
    task = load_task("polarity")
    ours = multiple_choice(model, tok, task.test[:20], batch_size=8, progress=False)
    theirs = run_lm_eval(str(tiny_path), task, limit=20, batch_size=8, work_dir=tmp_path)
    _assert_agree(ours, theirs)
    assert (tmp_path / "slimtune_polarity_test.yaml").is_file()


def test_acc_norm_and_bos_agree_with_lm_eval(tiny_bos, tiny_bos_path):
    """Choices of different lengths (acc_norm matters), a prompt with a trailing space, and a
    tokenizer that prepends BOS."""
    model, tok = tiny_bos
    pol = load_task("polarity").test[:6]
    extra = [Example(ex.prompt + " ", ("good", "bad, really bad", "so-so"), ex.label) for ex in pol]
    examples = pol + extra
    task = Task("mixed", "multiple_choice", [], [], examples)
    ours = multiple_choice(model, tok, examples, batch_size=4, progress=False)
    theirs = run_lm_eval(str(tiny_bos_path), task, batch_size=4)
    _assert_agree(ours, theirs)


def test_generation_agrees_with_lm_eval(tiny, tiny_path, news):
    model, tok = tiny
    lines = [line for line in news.split("\n") if line][:4]
    examples = [Example(line[: 30 + 11 * i], target=str(i)) for i, line in enumerate(lines)]
    task = Task("toy_gen", "generation", [], [], examples, max_new_tokens=8, stop=("\n\n",),
                score=lambda pred, ex: float(len(pred) % 2 == 0))
    ours = generation_accuracy(model, tok, task, examples, batch_size=2, progress=False, samples=4)
    theirs = run_lm_eval(str(tiny_path), task, batch_size=2)
    assert theirs["predictions"] == [s["prediction"] for s in ours["samples"]]
    assert theirs["accuracy"] == ours["accuracy"] and theirs["n"] == ours["n"]


def test_missing_lm_eval_is_a_config_error(monkeypatch, tiny_path):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # makes `import lm_eval` fail
    with pytest.raises(ConfigError, match=r"pip install slimtune\[lm-eval\]"):
        run_lm_eval(str(tiny_path), load_task("polarity"), limit=2)


@pytest.mark.slow
def test_polarity_agrees_with_lm_eval_on_the_default_model():
    from slimtune.models import load_model, resolve_model

    model, tok = load_model("smollm2-135m")
    task = load_task("polarity")
    ours = multiple_choice(model, tok, task.test[:20], batch_size=8, progress=False)
    theirs = run_lm_eval(resolve_model("smollm2-135m"), task, limit=20, batch_size=8)
    _assert_agree(ours, theirs)
