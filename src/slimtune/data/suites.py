"""Benchmark suites: several member tasks loaded as one Task, evaluated per member.

`suite:commonsense` stands in for the commonsense suite of the adapter papers (BoolQ, PIQA, SIQA,
HellaSwag, WinoGrande, ...) with multiple-choice BIG-bench tasks of the same kinds: strategyqa
(yes/no questions, like BoolQ), goal_step_wikihow:step_inference (pick the step that achieves a goal,
like PIQA/HellaSwag), social_iqa (SIQA), winowhy (pronoun resolution, like WinoGrande), timedial
(temporal commonsense in dialogue) and sports_understanding (plausibility of a statement).
`suite:commonsense-evals` is the same kind of suite from data that a fresh machine can still fetch
(the registry no longer serves BIG-bench's sdist): the multiple-choice data sets of OpenAI's evals
registry that test commonsense: QuaRTz (qualitative science, like ARC/OpenBookQA) and Social IQa (SIQA
itself). PARARULE-Plus and CREPE were members until a tuned model was found to win them without
commonsense: as packaged, PARARULE-Plus' answer is "false" exactly when its question holds "not", and
77% of CREPE's answers are one label (bench/RESULTS.md); they stay loadable as `evals:` tasks.
`suite:math` is gsm_symbolic, whose test and validation templates are held out of train.

Each member is split by its own loader with the suite's split seed; the suite takes the first
`test_per_task` (at most 500) of each member's test split, a training mix of at most
`train_per_task` per member from their train splits (like the papers' commonsense_15k) and at most
`validation_per_task` per member for selection. Examples keep their member's ids, so a leak check
finds the same overlap whether a model was trained on the suite or on the member, and every example
carries meta["task"], its member's spec. Each split is interleaved (a fixed shuffle), so the first N
examples of a split draw from every member.
"""

from __future__ import annotations

import random
from dataclasses import replace

from ..errors import DataError
from . import gsm
from .bigbench import load_bigbench
from .openai_evals import load_openai_evals
from .tasks import SPLITS, Example, Task

MAX_TEST = 500
COMMONSENSE = ("bigbench:strategyqa", "bigbench:goal_step_wikihow:step_inference", "bigbench:social_iqa",
               "bigbench:winowhy", "bigbench:timedial", "bigbench:sports_understanding")
COMMONSENSE_EVALS = ("evals:quartz", "evals:socialiqa")
MATH = ("gsm_symbolic",)


def _check_caps(name: str, caps: dict[str, int]) -> None:
    for option, n in caps.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise DataError(f"task {name}: {option} must be a non-negative integer, got {n!r}")
    if caps["test_per_task"] > MAX_TEST:
        raise DataError(f"task {name}: test_per_task is at most {MAX_TEST} (a fixed test split per member), "
                        f"got {caps['test_per_task']}")


def _tagged(examples: list[Example], spec: str) -> list[Example]:
    return [replace(e, meta={**e.meta, "task": spec}) for e in examples]


def build_suite(name: str, members: dict[str, Task], seed: int, train_per_task: int, validation_per_task: int,
                test_per_task: int, description: str = "") -> Task:
    """One Task from loaded member tasks (spec -> Task, all of one kind), each split capped per member.

    An example whose id is in any member's test split is dropped from the suite's train and validation
    splits, and one in any member's validation split from its train split, so the suite's splits are
    disjoint by id even where two members share a prompt.
    """
    kinds = {t.kind for t in members.values()}
    if len(kinds) != 1:
        raise DataError(f"suite {name}: members mix task kinds ({', '.join(sorted(kinds))}); "
                        "a suite's members must all be multiple choice or all generation")
    caps = {"train": train_per_task, "validation": validation_per_task, "test": test_per_task}
    held = {s: {e.id for t in members.values() for e in t.split(s)} for s in ("validation", "test")}
    splits: dict[str, list[Example]] = {}
    for split in SPLITS:
        banned = set() if split == "test" else held["test"] | (held["validation"] if split == "train" else set())
        mix = [e for spec, t in members.items()
               for e in _tagged([e for e in t.split(split) if e.id not in banned][:caps[split]], spec)]
        random.Random(f"{name}:{split}:{seed}").shuffle(mix)  # interleaved, so a split's head draws from all
        splits[split] = mix
    first = next(iter(members.values()))
    return Task(name, first.kind, splits["train"], splits["validation"], splits["test"], score=first.score,
                description=description, max_new_tokens=max(t.max_new_tokens for t in members.values()),
                stop=first.stop, members=tuple(members))


def _member(spec: str, seed: int, **options) -> Task:
    """A member task, loaded as load_task would (the members are BIG-bench or evals tasks and gsm_symbolic)."""
    if spec == gsm.NAME:
        task = gsm.load_gsm_symbolic(seed=seed, **options)
    elif spec.startswith("evals:"):
        task = load_openai_evals(spec.removeprefix("evals:"), seed=seed, **options)
    else:
        task = load_bigbench(spec.removeprefix("bigbench:"), seed=seed, **options)
    return task.with_spec(spec, seed, options)


def _commonsense_suite(name: str, specs: tuple[str, ...], source: str, seed: int, caps: dict[str, int]) -> Task:
    _check_caps(name, caps)
    members = {spec: _member(spec, seed) for spec in specs}
    listed = ", ".join(spec.split(":", 1)[1] for spec in specs)
    return build_suite(name, members, seed, caps["train_per_task"], caps["validation_per_task"], caps["test_per_task"],
                       description=f"Commonsense suite: {listed} ({source}; up to {caps['test_per_task']} test "
                                   "examples each)")


def load_commonsense(seed: int = 0, train_per_task: int = 1000, validation_per_task: int = 100,
                     test_per_task: int = MAX_TEST) -> Task:
    """suite:commonsense: six multiple-choice BIG-bench tasks (see the module docstring)."""
    return _commonsense_suite("suite:commonsense", COMMONSENSE, "BIG-bench", seed, {
        "train_per_task": train_per_task, "validation_per_task": validation_per_task, "test_per_task": test_per_task})


def load_commonsense_evals(seed: int = 0, train_per_task: int = 1000, validation_per_task: int = 100,
                           test_per_task: int = MAX_TEST) -> Task:
    """suite:commonsense-evals: two multiple-choice data sets of OpenAI's evals registry (module docstring)."""
    return _commonsense_suite("suite:commonsense-evals", COMMONSENSE_EVALS, "OpenAI evals", seed, {
        "train_per_task": train_per_task, "validation_per_task": validation_per_task, "test_per_task": test_per_task})


def load_math(seed: int = 0, train_per_task: int = 1000, validation_per_task: int = 100,
              test_per_task: int = MAX_TEST) -> Task:
    """suite:math: gsm_symbolic with held-out templates, generated to the suite's sizes (its test
    problems are those of gsm_symbolic loaded alone, whatever the sizes)."""
    name = "suite:math"
    _check_caps(name, {"train_per_task": train_per_task, "validation_per_task": validation_per_task,
                       "test_per_task": test_per_task})
    members = {spec: _member(spec, seed, train_size=train_per_task, validation_size=validation_per_task,
                             test_size=test_per_task) for spec in MATH}
    return build_suite(name, members, seed, train_per_task, validation_per_task, test_per_task,
                       description="Math suite: gsm_symbolic, test and validation templates held out of train")


SUITES = {"suite:commonsense": load_commonsense, "suite:commonsense-evals": load_commonsense_evals,
          "suite:math": load_math}
__all__ = ["SUITES", "build_suite", "load_commonsense", "load_commonsense_evals", "load_math"]
