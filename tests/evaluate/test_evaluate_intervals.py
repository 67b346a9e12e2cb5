"""evaluate_model's per-example ids and scores, bootstrap intervals and per-member suite results."""

import json

import numpy as np
import pytest

from slimtune.data import Example, Task, load_task
from slimtune.evaluate import evaluate_model, multiple_choice
from slimtune.evaluate.intervals import mean_ci


def test_multiple_choice_scores_ids_and_interval(tiny):
    model, tok = tiny
    task = load_task("polarity")
    r = evaluate_model(model, tok, task, limit=20, progress=False)
    mc = multiple_choice(model, tok, task.test[:20], progress=False)
    assert r["ids"] == [e.id for e in task.test[:20]]
    assert r["scores"] == [float(p == e.label) for p, e in zip(mc["predictions"], task.test[:20])]
    assert np.mean(r["scores"]) == pytest.approx(r["acc"]) and (r["acc"], r["n"]) == (mc["acc"], 20)
    assert r["acc_ci"] == mean_ci(r["scores"])["ci"] and r["acc_ci"][0] <= r["acc"] <= r["acc_ci"][1]
    assert "per_task" not in r and "average" not in r


def test_generation_scores_are_the_scorers(tiny):
    model, tok = tiny
    examples = [Example(f"Hello {i}", target="x") for i in range(4)]
    task = Task("toy", "generation", [], [], examples, score=lambda p, ex: 0.5 if ex.prompt.endswith(("0", "1")) else 1.0,
                max_new_tokens=2)
    r = evaluate_model(model, tok, task, progress=False)
    assert r["scores"] == [0.5, 0.5, 1.0, 1.0] and r["accuracy"] == 0.75
    assert r["accuracy_ci"][0] >= 0.5 and r["accuracy_ci"][1] <= 1.0 and r["ids"] == [e.id for e in examples]


def test_suite_reports_each_member_and_the_macro_average(tiny):
    model, tok = tiny
    suite = load_task("suite:commonsense", train_per_task=0, validation_per_task=0, test_per_task=4)
    r = evaluate_model(model, tok, suite, progress=False)
    json.dumps(r)
    assert r["n"] == 24 and list(r["per_task"]) == list(suite.members)
    for member, m in r["per_task"].items():
        mine = [s for s, e in zip(r["scores"], suite.test) if e.meta["task"] == member]
        assert m["n"] == 4 and m["acc"] == pytest.approx(np.mean(mine)) and m["acc_ci"][0] <= m["acc"] <= m["acc_ci"][1]
    assert r["average"] == pytest.approx(np.mean([m["acc"] for m in r["per_task"].values()]))
    assert r["average_ci"][0] <= r["average"] <= r["average_ci"][1]
    # equal member sizes: the macro average is the plain accuracy
    assert r["average"] == pytest.approx(r["acc"])
    # a limit keeps only the members it reaches
    part = evaluate_model(model, tok, suite, limit=3, progress=False)
    assert sum(m["n"] for m in part["per_task"].values()) == 3
