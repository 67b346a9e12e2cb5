"""BIG-bench tasks: from the bigbench==1.0.0 sdist or $SLIMTUNE_BIGBENCH_DIR (tests marked real_bigbench need
the real files), and from the BIG-bench-format toy tasks that every machine has."""

import json
from collections import Counter

import pytest

from slimtune.data import bigbench, load_task
from slimtune.data.bigbench import available_tasks, subtasks
from slimtune.errors import DataError
from toy_bigbench import EXAMPLES, write_toy_bigbench


@pytest.mark.real_bigbench
def test_strategyqa_multiple_choice():
    task = load_task("bigbench:strategyqa")
    assert task.kind == "multiple_choice"
    assert sum(task.sizes().values()) == 2289  # 2290 examples, one duplicate dropped (as BIG-bench does)
    ex = next(e for e in task.split("train") + task.validation + task.test
              if "frost during some college commencements" in e.prompt)
    # strategyqa sets append_choices_to_input false: default "\nQ: " / "\nA: " prefixes, no choice list
    assert ex.prompt == "Q: Is it common to see frost during some college commencements?\nA:"
    assert ex.choices == (" Yes", " No") and ex.label == 0


@pytest.mark.real_bigbench
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


@pytest.mark.real_bigbench
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


@pytest.mark.real_bigbench
def test_unknown_task_lists_available():
    assert "strategyqa" in available_tasks() and len(available_tasks()) > 150
    with pytest.raises(DataError, match="no BIG-bench task 'nope'.*strategyqa"):
        load_task("bigbench:nope")


def _split_of_questions(task) -> dict[str, set[str]]:
    where: dict[str, set[str]] = {}
    for s in ("train", "validation", "test"):
        for e in task.split(s):
            where.setdefault(e.meta["question"], set()).add(s)
    return where


@pytest.mark.real_bigbench
@pytest.mark.parametrize("spec,repeats", [("bigbench:social_iqa", 5), ("bigbench:goal_step_wikihow", 205)])
def test_repeated_questions_stay_in_one_split(spec, repeats):
    # Questions asked more than once (social_iqa: with other choices; goal_step_wikihow: across its
    # subtasks). Grouping by raw position alone put 3 of social_iqa's 5 and 119 of goal_step_wikihow's
    # 205 into two splits at split seed 0.
    task = load_task(spec, seed=0)
    where = _split_of_questions(task)
    count = Counter(e.meta["question"] for s in ("train", "validation", "test") for e in task.split(s))
    repeated = [q for q, n in count.items() if n > 1]
    assert len(repeated) == repeats
    assert all(len(where[q]) == 1 for q in repeated)
    ids = [{e.id for e in task.split(s)} for s in ("train", "validation", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])


def test_prompts_do_not_depend_on_the_split_seed():
    a, b = load_task("bigbench:social_iqa", seed=0), load_task("bigbench:social_iqa", seed=7)
    ids = lambda t: sorted(e.id for s in ("train", "validation", "test") for e in t.split(s))  # noqa: E731
    assert ids(a) == ids(b)  # same prompts (appended choices in the same order), other splits
    assert {e.id for e in a.test} != {e.id for e in b.test}


def _write(root, task, examples, sub=None):
    path = root / task / sub if sub else root / task
    path.mkdir(parents=True, exist_ok=True)
    (path / "task.json").write_text(json.dumps({"examples": examples} if examples is not None else {}))


def _mc(text, gold, other):
    return {"input": text, "target_scores": {gold: 1, other: 0}}


def test_synthetic_repeats_parallel_and_unrelated_subtasks(tmp_path, monkeypatch):
    monkeypatch.setattr(bigbench, "tasks_root", lambda: tmp_path)
    # "a": 40 questions; "b": other questions, except that its last asks a's question 0 again;
    # within "a", question 1 is repeated at the end with other choices.
    a = [_mc(f"question {i}?", f"yes{i}", f"no{i}") for i in range(40)] + [_mc("question 1?", "maybe", "never")]
    b = [_mc(f"other {i}?", f"x{i}", f"y{i}") for i in range(40)] + [_mc("  question 0? ", "yes0", "no0")]
    # "hint": a's questions rephrased, same gold answers at the same positions (a parallel subtask)
    hint = [_mc(f"hinted {i}?", f"yes{i}", f"no{i}") for i in range(40)] + [_mc("hinted 1?", "maybe", "never")]
    _write(tmp_path, "toy", None)  # a task of subtasks: its own task.json has no examples
    _write(tmp_path, "toy", b, "b")
    _write(tmp_path, "toy", a, "a")
    _write(tmp_path, "toy", hint, "hint")
    for seed in range(8):
        task = load_task("bigbench:toy", seed=seed)
        split = {e.meta["question"] + "|" + e.meta["source"]: s for s in ("train", "validation", "test")
                 for e in task.split(s)}
        assert split["question 0?|bigbench:toy:a"] == split["question 0?|bigbench:toy:b"]
        where = _split_of_questions(task)
        assert len(where["question 1?"]) == 1
        assert all(split[f"question {i}?|bigbench:toy:a"] == split[f"hinted {i}?|bigbench:toy:hint"]
                   for i in range(40))
    # b is not parallel to a (other gold answers): its positions are not tied to a's
    assert any(split[f"question {i}?|bigbench:toy:a"] != split[f"other {i}?|bigbench:toy:b"] for i in range(1, 40))


def test_directory_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMTUNE_BIGBENCH_DIR", str(write_toy_bigbench(tmp_path / "tasks")))
    assert bigbench.tasks_root() == tmp_path / "tasks" and "social_iqa" in available_tasks()
    assert subtasks("goal_step_wikihow") == ["goal_inference", "step_inference", "step_ordering"]
    combined, one = load_task("bigbench:goal_step_wikihow"), load_task("bigbench:goal_step_wikihow:step_inference")
    assert sum(combined.sizes().values()) == 3 * EXAMPLES and sum(one.sizes().values()) == EXAMPLES
    social = load_task("bigbench:social_iqa").test[0]  # the choices listed in the prompt, BIG-bench's way
    assert social.prompt.startswith("Q: ") and social.prompt.endswith("\nA:") and len(social.choices) == 3
    assert all(f"\n  choice: {c.strip()}" in social.prompt for c in social.choices)
    why = load_task("bigbench:winowhy").test[0]
    assert why.prompt.startswith("Is the reason correct?\nQ: ") and "choice:" not in why.prompt
    with pytest.raises(DataError, match=f"no BIG-bench task 'nope' in {tmp_path / 'tasks'}.*social_iqa"):
        load_task("bigbench:nope")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("SLIMTUNE_BIGBENCH_DIR", str(tmp_path / "empty"))
    with pytest.raises(DataError, match="SLIMTUNE_BIGBENCH_DIR=.*empty holds no <task>/task.json"):
        load_task("bigbench:strategyqa")


def test_unavailable_sdist_names_the_ways_out(monkeypatch):
    from slimtune import assets
    from slimtune.errors import ModelLoadError

    def unavailable(*args, **kwargs):
        raise ModelLoadError("could not fetch bigbench==1.0.0 with pip download")

    monkeypatch.delenv("SLIMTUNE_BIGBENCH_DIR", raising=False)
    monkeypatch.setattr(assets, "package_asset", unavailable)
    with pytest.raises(DataError, match="BIG-bench tasks are not available.*SLIMTUNE_BIGBENCH_DIR.*hf:"):
        load_task("bigbench:strategyqa")
