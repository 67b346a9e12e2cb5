"""gsm_symbolic: generated math problems, worked solutions and the answer scorer."""

import pytest

from slimtune.data import load_task
from slimtune.data.gsm import extract_answer, score
from slimtune.data.tasks import Example
from slimtune.errors import DataError


@pytest.fixture(scope="module")
def task():
    return load_task("gsm_symbolic", seed=0)


def test_default_sizes_and_format(task):
    assert task.kind == "generation" and task.sizes() == {"train": 200, "validation": 50, "test": 100}
    assert task.max_new_tokens >= 256 and "\nQuestion:" in task.stop
    for ex in task.train[:20] + task.test[:20]:
        assert ex.prompt.startswith("Question: ") and ex.prompt.endswith("\nAnswer:")
        assert ex.answer.startswith(" ") and ex.answer.rstrip().endswith(f"\n#### {ex.target}")
        assert ex.answer.count("\n") >= 2  # a worked solution, not just the number
        float(ex.target)


def test_splits_deterministic_disjoint_and_test_independent_of_train_size(task):
    again = load_task("gsm_symbolic", seed=0)
    assert [e.prompt for e in again.test] == [e.prompt for e in task.test]
    prompts = [{e.prompt for e in task.split(s)} for s in ("train", "validation", "test")]
    assert sum(map(len, prompts)) == 350 and len(set.union(*prompts)) == 350
    small = load_task("gsm_symbolic", seed=0, train_size=5, validation_size=2, test_size=100)
    assert small.sizes() == {"train": 5, "validation": 2, "test": 100}
    assert [e.prompt for e in small.test] == [e.prompt for e in task.test]
    other = load_task("gsm_symbolic", seed=1, train_size=0, validation_size=0, test_size=20)
    assert [e.prompt for e in other.test] != [e.prompt for e in task.test[:20]]


def test_gold_solutions_score_one(task):
    assert all(task.score(ex.answer, ex) == 1.0 for ex in task.test)


def test_scorer_right_and_wrong():
    ex = Example("Question: q\nAnswer:", answer=" 2+2=4\n#### 4", target="4")
    assert score(" 2 + 2 = 4\n#### 4", ex) == 1.0
    assert score("#### 4.0", ex) == 1.0
    assert score("#### 5", ex) == 0.0  # reasoning-gym's 0.01 format reward counts as wrong
    assert score("so 3 + 1 = 4 apples", ex) == 1.0  # no ####: the last number
    assert score("4 apples minus 1 is 3", ex) == 0.0
    assert score("#### 4\nQuestion: next one\n#### 9", ex) == 1.0  # the first final answer counts
    assert score("no number here", ex) == 0.0
    assert score("#### -4", ex) == 0.0
    big = Example("q", target="28080")
    assert score("he earns £28,080 a year", big) == 1.0


def test_extract_answer():
    assert extract_answer("160-48=112 emails\n#### 112") == "112"
    assert extract_answer("The total is 1,170 apartments.") == "1170"
    assert extract_answer("160-48=112") == "112"
    assert extract_answer("it is -3 degrees") == "-3"
    assert extract_answer("#### 9281.25") == "9281.25"
    assert extract_answer("nothing") is None


def test_bad_sizes():
    with pytest.raises(DataError, match="train_size must be a non-negative integer"):
        load_task("gsm_symbolic", train_size=-1)
    with pytest.raises(DataError, match="unknown option.*accepted: train_size, validation_size, test_size"):
        load_task("gsm_symbolic", n_train=3)
