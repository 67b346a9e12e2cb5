"""Suites: member tasks loaded as one Task, with the members' ids and per-member caps."""

from collections import Counter

import pytest

from slimtune.data import TASKS, Task, load_task
from slimtune.data.suites import COMMONSENSE, build_suite
from slimtune.data.tasks import Example
from slimtune.errors import DataError

SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="module")
def commonsense():
    return load_task("suite:commonsense", seed=0, train_per_task=200, validation_per_task=30)


def test_registered_and_shaped(commonsense):
    assert {"suite:commonsense", "suite:math"} <= set(TASKS)
    assert commonsense.kind == "multiple_choice" and commonsense.spec == "suite:commonsense"
    assert commonsense.members == COMMONSENSE and len(commonsense.members) >= 6
    assert commonsense.options == {"train_per_task": 200, "validation_per_task": 30}
    for s in SPLITS:
        assert {e.meta["task"] for e in commonsense.split(s)} == set(COMMONSENSE)


@pytest.mark.real_bigbench
def test_member_splits_sizes_and_ids(commonsense):
    counts = {s: Counter(e.meta["task"] for e in commonsense.split(s)) for s in SPLITS}
    for spec in COMMONSENSE:
        member = load_task(spec, seed=0)
        assert counts["test"][spec] == min(500, len(member.test))
        assert counts["train"][spec] == 200 and counts["validation"][spec] == 30
        # the suite's examples are the first of the member's own splits, with the member's ids
        for s, n in (("test", 500), ("validation", 30), ("train", 200)):
            mine = [e.id for e in commonsense.split(s) if e.meta["task"] == spec]
            assert sorted(mine) == sorted(e.id for e in member.split(s)[:n])
    assert max(counts["test"].values()) == 500 and sum(counts["test"].values()) == 2729
    ids = [{e.id for e in commonsense.split(s)} for s in SPLITS]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])


def test_interleaved_deterministic_and_seeded(commonsense):
    assert len({e.meta["task"] for e in commonsense.test[:40]}) >= 5  # a split's head draws from every member
    again = load_task("suite:commonsense", seed=0, train_per_task=200, validation_per_task=30)
    assert [e.id for e in again.test] == [e.id for e in commonsense.test]
    other = load_task("suite:commonsense", seed=1, train_per_task=0, validation_per_task=0, test_per_task=50)
    assert other.sizes() == {"train": 0, "validation": 0, "test": 300}
    assert {e.id for e in other.test} != {e.id for e in commonsense.test}


@pytest.mark.real_bigbench
def test_default_caps():
    suite = load_task("suite:commonsense")
    counts = Counter(e.meta["task"] for e in suite.train)
    assert max(counts.values()) == 1000 and counts["bigbench:sports_understanding"] == 592  # all it has
    assert set(Counter(e.meta["task"] for e in suite.validation).values()) == {100}


def test_math_suite_keeps_gsm_ids_and_templates():
    suite = load_task("suite:math", train_per_task=40, validation_per_task=10, test_per_task=30)
    assert suite.kind == "generation" and suite.members == ("gsm_symbolic",) and suite.score is not None
    assert suite.sizes() == {"train": 40, "validation": 10, "test": 30} and suite.max_new_tokens == 256
    alone = load_task("gsm_symbolic")
    assert {e.id for e in suite.test} == {e.id for e in alone.test[:30]}
    assert all(e.meta["task"] == "gsm_symbolic" for e in suite.test)
    assert {e.meta["template"] for e in suite.train}.isdisjoint(e.meta["template"] for e in suite.test)


def test_shared_prompts_across_members_never_straddle():
    # two members that ask one same question: it is held out of the suite's train if either tests it
    same = Example("Q: shared?\nA:", (" yes", " no"), 0)
    a = Task("a", "multiple_choice", [Example(f"a{i}", (" x", " y"), 0) for i in range(5)], [], [same])
    b = Task("b", "multiple_choice", [same] + [Example(f"b{i}", (" x", " y"), 0) for i in range(5)], [], [])
    suite = build_suite("s", {"a": a, "b": b}, 0, 10, 10, 10)
    assert same.id not in {e.id for e in suite.train} and len(suite.train) == 10
    assert [e.meta["task"] for e in suite.test] == ["a"]


def test_bad_options():
    with pytest.raises(DataError, match="test_per_task is at most 500"):
        load_task("suite:commonsense", test_per_task=800)
    with pytest.raises(DataError, match="train_per_task must be a non-negative integer"):
        load_task("suite:math", train_per_task=-1)
    with pytest.raises(DataError, match="unknown option.*accepted: train_per_task, validation_per_task, test_per_task"):
        load_task("suite:commonsense", max_examples=3)
    gen = Task("g", "generation", [], [], [Example("q", target="1")], score=lambda p, e: 1.0)
    mc = Task("m", "multiple_choice", [], [], [Example("q", (" a", " b"), 0)])
    with pytest.raises(DataError, match="members mix task kinds"):
        build_suite("s", {"g": gen, "m": mc}, 0, 1, 1, 1)
