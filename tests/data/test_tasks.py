"""Task registry, load_task dispatch, the polarity task and prompt formats."""

import pytest

from slimtune.data import DEFAULT_TASK, TASKS, load_task
from slimtune.data.formats import classification_prompt, multiple_choice, normalize_answer, qa_prompt, split_prefix
from slimtune.data.tasks import Example, split_examples
from slimtune.errors import DataError


def test_registry_names():
    assert {"polarity", "gsm_symbolic", "bigbench:strategyqa", "bigbench:goal_step_wikihow", "bigbench:social_iqa",
            "bigbench:vitaminc_fact_verification", "bigbench:elementary_math_qa"} <= set(TASKS)
    assert DEFAULT_TASK in TASKS


def test_polarity_still_works():
    task = load_task("polarity", seed=0)
    assert task.kind == "multiple_choice" and task.sizes() == {"train": 120, "validation": 30, "test": 50}
    assert all(e.choices == (" negative", " positive") and e.prompt.endswith("\nSentiment:") for e in task.test)
    with pytest.raises(DataError, match="task polarity: unknown option.*accepted: none"):
        load_task("polarity", fractions=(0.5, 0.5))


def test_unknown_spec_lists_names_and_forms():
    with pytest.raises(DataError) as err:
        load_task("nope")
    msg = str(err.value)
    assert "polarity" in msg and "gsm_symbolic" in msg and "bigbench:<task>" in msg and "hf:" in msg and ".jsonl" in msg


def test_split_examples_deterministic():
    items = [Example(str(i)) for i in range(20)]
    a = split_examples(items, seed=5)
    assert a == split_examples(items, seed=5) and [len(p) for p in a] == [12, 3, 5]


def test_formats():
    assert qa_prompt(" 2+2? ") == "Question: 2+2?\nAnswer:"
    assert classification_prompt("good") == "Text: good\nLabel:"
    assert split_prefix("\nA: ") == ("\nA:", " ") and split_prefix("A:\n") == ("A:\n", "")
    assert multiple_choice("Q: x\nA: ", ["yes", "no"]) == ("Q: x\nA:", (" yes", " no"))
    prompt, choices = multiple_choice(qa_prompt("x"), ["yes", "no"], lettered=True)
    assert prompt == "Question: x\nA. yes\nB. no\nAnswer:" and choices == (" A", " B")
    assert normalize_answer(' "Paris." ') == "paris" and normalize_answer("3.5") != normalize_answer("35")
