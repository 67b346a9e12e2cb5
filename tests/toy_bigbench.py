"""BIG-bench-format task files for the tests when the real ones are not available.

The package registry stopped serving `bigbench==1.0.0` (2026-12-06), so a fresh machine may have no
BIG-bench data. Then the tests point $SLIMTUNE_BIGBENCH_DIR at these files: the same directory
layout, JSON keys and formatting options as BIG-bench's (task prefix, appended choices, subtasks, a
generation task), under the names the registry and `suite:commonsense` use, with questions made
from a fixed vocabulary. They exercise the loader, the splits, the suites and everything downstream;
tests that assert facts of the real tasks (sizes, exact prompts) are marked `real_bigbench` and run
only where the real files are.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

PEOPLE = ("Alex", "Jordan", "Casey", "Riley", "Morgan", "Taylor", "Quinn", "Avery", "Jamie", "Robin")
THINGS = ("the kettle", "a bicycle", "the garden", "an old map", "the stairs", "a letter", "the oven",
          "a tent", "the window", "a violin", "the river", "a ladder")
ACTIONS = ("fixed", "painted", "cleaned", "borrowed", "opened", "carried", "sold", "found", "checked", "moved")
FEELINGS = ("proud", "tired", "relieved", "curious", "annoyed", "grateful", "nervous", "calm")
SPORTS = ("scored a goal", "hit a home run", "made a free throw", "served an ace", "threw a touchdown")
EXAMPLES = 240


def _sentence(rng: random.Random, i: int) -> str:
    return f"{rng.choice(PEOPLE)} {rng.choice(ACTIONS)} {rng.choice(THINGS)} on day {i}"


def _mc(text: str, choices: list[str], gold: int) -> dict:
    return {"input": text, "target_scores": {c: int(k == gold) for k, c in enumerate(choices)}}


def _tasks(rng: random.Random) -> dict[str, dict]:
    n = range(EXAMPLES)
    yes_no = [_mc(f"Is it true that {_sentence(rng, i)}?", ["Yes", "No"], rng.randrange(2)) for i in n]
    # three answers of different lengths, listed in the prompt (append_choices_to_input), as social_iqa's
    social = [_mc(f"{_sentence(rng, i)}. How would {rng.choice(PEOPLE)} feel as a result?",
                  [rng.choice(FEELINGS), f"very {rng.choice(FEELINGS)} about it",
                   f"{rng.choice(FEELINGS)} and a little {rng.choice(FEELINGS)} afterwards"], rng.randrange(3))
              for i in n]
    steps = {sub: [_mc(f"{_sentence(rng, i)}. Which {sub.replace('_', ' ')} fits?",
                       [f"{a} {t}" for a, t in zip(rng.sample(ACTIONS, 4), rng.sample(THINGS, 4))], rng.randrange(4))
                   for i in n] for sub in ("goal_inference", "step_inference", "step_ordering")}
    why = [_mc(f"{_sentence(rng, i)} because it was broken. The reason is", ["correct", "incorrect"], rng.randrange(2))
           for i in n]
    when = [_mc(f"{_sentence(rng, i)} and waited for ___.", ["ten minutes", "two centuries", "a second"],
                rng.randrange(3)) for i in n]
    sports = [_mc(f"{rng.choice(PEOPLE)} {rng.choice(SPORTS)} in game {i}.", ["plausible", "implausible"],
                  rng.randrange(2)) for i in n]
    arithmetic = [{"input": f"{a} + {b} =", "target": str(a + b)}
                  for a, b in ((rng.randrange(100), rng.randrange(100)) for _ in n)]
    return {
        "strategyqa": {"append_choices_to_input": False, "examples": yes_no},
        "social_iqa": {"examples": social},
        "goal_step_wikihow": {"subtasks": steps},
        "winowhy": {"task_prefix": "Is the reason correct?", "append_choices_to_input": False, "examples": why},
        "timedial": {"examples": when},
        "sports_understanding": {"append_choices_to_input": False, "examples": sports},
        "simple_arithmetic_json": {"examples": arithmetic},
    }


def write_toy_bigbench(root: Path) -> Path:
    """Write the toy tasks under `root` (<task>/task.json, <task>/<subtask>/task.json); returns root."""
    root = Path(root)
    for name, spec in _tasks(random.Random(0)).items():
        subs = spec.pop("subtasks", {})
        (root / name).mkdir(parents=True, exist_ok=True)
        task = {"name": name, "description": f"toy {name}", "keywords": ["toy"], **spec}
        if subs:  # a task of subtasks: its own task.json lists them and holds no examples
            task["subtasks"] = [{"name": f"{name}:{s}"} for s in subs]
        for sub, examples in subs.items():
            (root / name / sub).mkdir(exist_ok=True)
            (root / name / sub / "task.json").write_text(json.dumps({"name": f"{name}:{sub}", "examples": examples}))
        (root / name / "task.json").write_text(json.dumps(task))
    return root
