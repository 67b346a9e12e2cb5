"""Multiple-choice data sets of OpenAI's evals registry (the evals==3.0.1.post1 sdist), and the suite of them."""

import pytest

from slimtune.data import TASKS, load_task
from slimtune.data.openai_evals import answer_labels, row_example
from slimtune.errors import DataError

from registry_data import load_or_skip

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


def test_inline_options_and_answer_words():
    siqa = row_example(_row("Alex found a ring. What will Alex want to do next? A: keep it; B: find the owner; "
                            "C: leave."), "toy:4")
    assert siqa.prompt == "Question: Alex found a ring. What will Alex want to do next?\nAnswer:"
    assert siqa.choices == (" keep it", " find the owner", " leave") and siqa.label == 1
    rows = [("toy:5", _row("Passage: Anne is big. Question: Anne is big.\nAnswer: ", ideal="true")),
            ("toy:6", _row("Passage: Anne is big. Question: Anne is small.\nAnswer: ", ideal=["false"]))]
    labels = answer_labels(rows)
    assert labels == ("false", "true")
    ex = row_example(rows[1][1], "toy:6", labels=labels)
    assert ex.prompt == "Passage: Anne is big. Question: Anne is small.\nAnswer:"  # already ends with Answer:
    assert ex.choices == (" false", " true") and ex.label == 0
    # lettered rows, too many answers, or long ideals are not a closed set of answer words
    assert answer_labels(rows + [("toy:7", _row("Q\n A: x\n B: y", ideal="A"))]) is None
    assert answer_labels([(f"t:{k}", _row("Q", ideal=str(k))) for k in range(6)]) is None
    assert answer_labels([("t:1", _row("Q", ideal="a long free text answer")), ("t:2", _row("Q", ideal="no"))]) is None


@pytest.mark.parametrize("row,message", [
    (_row("No options here"), "does not end with lettered options"),
    (_row("Q\n A: x\n C: y"), "lettered A, C, not A, B"),
    (_row("Q\n A: x\n B: y", ideal="C"), "'ideal' is 'C', not one of the options A, B"),
    (_row("Q? A: x; B: y.", ideal="D"), "'ideal' is 'D', not one of the options A, B"),
    ({"input": [SYSTEM], "ideal": "A"}, "no user message"),
])
def test_rows_of_another_form_are_refused_with_their_place(row, message):
    with pytest.raises(DataError, match=f"toy:7: .*{message}"):
        row_example(row, "toy:7")


def test_an_answer_outside_the_data_sets_answers_is_refused():
    with pytest.raises(DataError, match="toy:8: 'ideal' is 'maybe', not one of the data set's answers false, true"):
        row_example(_row("Is it?", ideal="maybe"), "toy:8", labels=("false", "true"))


@pytest.mark.parametrize("name", ["../quartz", "..", ".hidden"])
def test_bad_name_is_refused_before_any_fetch(name):
    with pytest.raises(DataError, match="letters, digits"):
        load_task(f"evals:{name}")


def test_quartz_held_out_split():
    assert "evals:quartz" in TASKS
    task = load_or_skip("evals:quartz")
    assert task.kind == "multiple_choice" and task.sizes() == {"train": 2314, "validation": 581, "test": 965}
    assert all(len(e.choices) == 2 for e in task.test) and 0.4 < sum(e.label for e in task.test) / 965 < 0.6
    ids = [{e.id for e in task.split(s)} for s in ("train", "validation", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert {e.id for e in load_task("evals:quartz", seed=1).test} != ids[2]  # the split seed moves the split


@pytest.mark.parametrize("name,size,choices", [("socialiqa", 2224, 3), ("pararule-plus", 2000, 2), ("crepe", 1520, 3),
                                               ("sarcasm", 28614, 2)])
def test_the_other_data_sets_parse_whole(name, size, choices):
    task = load_or_skip(f"evals:{name}")
    examples = task.train + task.validation + task.test
    assert len(examples) == size and {len(e.choices) for e in examples} == {choices}
    assert len({e.label for e in examples}) == choices  # every answer occurs


def test_commonsense_evals_suite_holds_every_member_disjoint():
    suite = load_or_skip("suite:commonsense-evals", train_per_task=100, validation_per_task=20)
    assert suite.members == ("evals:quartz", "evals:socialiqa")
    assert suite.sizes() == {"train": 200, "validation": 40, "test": 1000}  # 500 test questions each
    ids = [{e.id for e in suite.split(s)} for s in ("train", "validation", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert {e.meta["task"] for e in suite.test[:40]} == set(suite.members)  # interleaved
    quartz = load_task("evals:quartz")
    assert {e.id for e in suite.test if e.meta["task"] == "evals:quartz"} <= {e.id for e in quartz.test}
