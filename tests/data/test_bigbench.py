"""BIG-bench tasks from the bigbench==1.0.0 sdist (fetched with pip download on first use)."""

import pytest

from slimtune.data import load_task
from slimtune.data.bigbench import available_tasks, subtasks
from slimtune.errors import DataError


def test_strategyqa_multiple_choice():
    task = load_task("bigbench:strategyqa")
    assert task.kind == "multiple_choice"
    assert sum(task.sizes().values()) == 2289  # 2290 examples, one duplicate dropped (as BIG-bench does)
    ex = next(e for e in task.split("train") + task.validation + task.test
              if "frost during some college commencements" in e.prompt)
    # strategyqa sets append_choices_to_input false: default "\nQ: " / "\nA: " prefixes, no choice list
    assert ex.prompt == "Q: Is it common to see frost during some college commencements?\nA:"
    assert ex.choices == (" Yes", " No") and ex.label == 0


def test_task_prefix_output_prefix_and_appended_choices():
    task = load_task("bigbench:vitaminc_fact_verification", max_examples=300)
    ex = task.train[0]
    assert ex.prompt.startswith("Based only on the information contained in a brief quote from Wikipedia")
    assert "\nPassage: " in ex.prompt and ex.prompt.endswith("\nTrue, False, or Neither?")
    assert ex.choices == (" True", " False", " Neither")
    social = load_task("bigbench:social_iqa")  # append_choices_to_input: the choices are listed
    ex = social.test[0]
    assert ex.prompt.startswith("Q: ") and ex.prompt.endswith("\nA:")
    for choice in ex.choices:
        assert f"\n  choice: {choice.strip()}" in ex.prompt


def test_deterministic_disjoint_splits():
    a, b = load_task("bigbench:social_iqa", seed=3), load_task("bigbench:social_iqa", seed=3)
    assert [e.prompt for e in a.test] == [e.prompt for e in b.test]
    c = load_task("bigbench:social_iqa", seed=4)
    assert [e.prompt for e in a.test] != [e.prompt for e in c.test]
    keys = [{(e.prompt, e.choices) for e in a.split(s)} for s in ("train", "validation", "test")]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])


def test_subtasks_combined_and_single():
    assert subtasks("goal_step_wikihow") == ["goal_inference", "step_inference", "step_ordering"]
    one = load_task("bigbench:goal_step_wikihow:step_inference")
    assert one.name == "bigbench:goal_step_wikihow:step_inference" and sum(one.sizes().values()) > 2000
    # elementary_math_qa asks the same question in each subtask: one question stays in one split
    math = load_task("bigbench:elementary_math_qa", max_examples=500)
    split_of = {}
    for s in ("train", "validation", "test"):
        for e in math.split(s):
            split_of.setdefault(e.meta["index"], set()).add(s)
    assert len(split_of) == 100 and all(len(v) == 1 for v in split_of.values())
    with pytest.raises(DataError, match="its subtasks are goal_inference, step_inference, step_ordering"):
        load_task("bigbench:goal_step_wikihow:nope")


def test_generation_task_exact_match():
    task = load_task("bigbench:simple_arithmetic_json")
    assert task.kind == "generation" and task.stop == ("\n",)
    ex = task.test[0]
    assert ex.prompt.startswith("Q: ") and ex.answer == " " + ex.target
    assert task.score(ex.target + "\nQ: 1 + 1 =", ex) == 1.0
    assert task.score("-1", ex) == 0.0


def test_unknown_task_lists_available():
    assert "strategyqa" in available_tasks() and len(available_tasks()) > 150
    with pytest.raises(DataError, match="no BIG-bench task 'nope'.*strategyqa"):
        load_task("bigbench:nope")
