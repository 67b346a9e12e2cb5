"""Lettered multiple-choice data sets of OpenAI's evals registry (the evals==3.0.1.post1 sdist)."""

import pytest

from slimtune.data import TASKS, load_task
from slimtune.data.openai_evals import row_example
from slimtune.errors import DataError

SYSTEM = {"role": "system", "content": "Answer with the letter of the option."}


def _row(text, ideal="B"):
    return {"input": [SYSTEM, {"role": "user", "content": text}], "ideal": ideal}


def test_a_row_becomes_a_question_with_its_options_as_choices():
    ex = row_example(_row("A kitten is younger than her mother, so she has\n\n A: more hair\n B: less hair"), "toy:1")
    assert ex.prompt == "Question: A kitten is younger than her mother, so she has\nAnswer:"
    assert ex.choices == (" more hair", " less hair") and ex.label == 1
    three = row_example(_row("Pick one:\nA) red\nB) green\nC. blue ", ideal=["C"]), "toy:2")
    assert three.choices == (" red", " green", " blue") and three.label == 2
    # the prompt is the question alone: the same question asked twice is one id, so it stays in one split
    assert ex.id == row_example(_row("A kitten is younger than her mother, so she has\n A: more hair\n B: less hair",
                                     ideal="A"), "toy:3").id


@pytest.mark.parametrize("row,message", [
    (_row("No options here"), "does not end with lettered options"),
    (_row("Q\n A: x\n C: y"), "does not end with lettered options"),
    (_row("Q\n A: x\n B: y", ideal="C"), "'ideal' is 'C', not one of the options A, B"),
    ({"input": [SYSTEM], "ideal": "A"}, "no user message"),
])
def test_rows_of_another_form_are_refused_with_their_place(row, message):
    with pytest.raises(DataError, match=f"toy:7: .*{message}"):
        row_example(row, "toy:7")


def test_bad_name_is_refused_before_any_fetch():
    with pytest.raises(DataError, match="letters, digits"):
        load_task("evals:../quartz")


def test_quartz_held_out_split():
    """The real data set, fetched from the package registry once (about 44 MB, then cached)."""
    assert "evals:quartz" in TASKS
    try:
        task = load_task("evals:quartz")
    except DataError as e:
        if "is not available" in str(e):
            pytest.skip(f"the package registry does not serve it here: {e}")
        raise
    assert task.kind == "multiple_choice" and task.sizes() == {"train": 2314, "validation": 581, "test": 965}
    assert all(len(e.choices) == 2 for e in task.test) and 0.4 < sum(e.label for e in task.test) / 965 < 0.6
    ids = [{e.id for e in task.split(s)} for s in ("train", "validation", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert {e.id for e in load_task("evals:quartz", seed=1).test} != ids[2]  # the split seed moves the split
