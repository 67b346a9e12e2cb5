"""gsm_symbolic: generated math problems, worked solutions and the answer scorer."""

import pytest

from slimtune.data import load_task
from slimtune.data.gsm import all_templates, extract_answer, score, template_split
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


def test_held_out_by_template(task):
    import reasoning_gym

    # meta["template"] is the template reasoning-gym instantiated for that index of the seed
    dataset = reasoning_gym.create_dataset("gsm_symbolic", seed=0, size=max(e.meta["index"] for s in
                                           ("train", "validation", "test") for e in task.split(s)) + 1)
    used = {}
    for s in ("train", "validation", "test"):
        for e in task.split(s):
            assert e.meta["template"] == dataset.task_indices[e.meta["index"]]
        used[s] = {e.meta["template"] for e in task.split(s)}
    assert not used["train"] & used["test"] and not used["train"] & used["validation"]
    assert not used["validation"] & used["test"]
    # the template split is the seed's, and the problems are spread over its templates
    parts = template_split(0)
    assert [len(parts[s]) for s in ("train", "validation", "test")] == [60, 8, 17]
    assert sorted(parts["train"] + parts["validation"] + parts["test"]) == all_templates()
    assert used["test"] <= set(parts["test"]) and len(used["test"]) >= 15
    assert used["validation"] <= set(parts["validation"]) and used["train"] <= set(parts["train"])
    assert template_split(1)["test"] != parts["test"]


def test_test_problems_do_not_depend_on_other_sizes(task):
    big = load_task("gsm_symbolic", seed=0, train_size=600, validation_size=0, test_size=150)
    assert [e.id for e in big.test[:100]] == [e.id for e in task.test]
    assert [e.id for e in big.train[:200]] == [e.id for e in task.train]
    assert {e.meta["template"] for e in big.train}.isdisjoint(e.meta["template"] for e in big.test)


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


def test_problems_carry_their_template_as_bootstrap_cluster(task):
    for ex in task.test + task.validation:
        assert ex.meta["cluster"] == f"gsm_symbolic template {ex.meta['template']}"
    assert len({ex.meta["cluster"] for ex in task.test}) == 17  # intervals resample the 17 test templates
