"""BIG-bench JSON tasks, read from the `bigbench==1.0.0` source distribution (Apache-2.0), or from
any directory of BIG-bench task files named by $SLIMTUNE_BIGBENCH_DIR.

The sdist holds bigbench/benchmark_tasks/<task>/task.json; slimtune fetches it once with
`pip download --no-deps --no-binary :all:` and unpacks it into the cache (never `pip install`: its
dependencies do not build). Where the registry does not serve that release (since 2026-12-06 it has
not, here), $SLIMTUNE_BIGBENCH_DIR points at a BIG-bench checkout's bigbench/benchmark_tasks.
Prompts follow BIG-bench's own default_format_fn: task_prefix + example_input_prefix + input [+ the
choices, when append_choices_to_input] + example_output_prefix.

Specs: "bigbench:<task>" and, for tasks split into subtask directories, "bigbench:<task>:<subtask>".
"bigbench:<task>" on such a task combines all its subtasks (as BIG-bench's aggregate score does).

Splits keep a repeated question in one split: examples whose input text is the same (whitespace
normalized; in another subtask, or repeated within a task with other choices) share a split, and so
do the i-th examples of parallel subtasks: subtasks with the same number of examples whose gold
answers agree position by position (at 90% of them), like elementary_math_qa's, which ask the same
question in each subtask with different hints. Other subtasks are unrelated position by position
(logical_deduction's have other lengths; list_functions' 250 subtasks of 32 apply other functions;
abstract_narrative_understanding's share their stories in another order and are linked by text),
and linking their positions would chain most of a task into one group. The choices appended to a prompt are shuffled by the task's
name and the example's position, never by the split seed, so a prompt (and its id) is the same text
under every split seed.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from ..errors import DataError
from .formats import exact_match, split_prefix
from .tasks import Example, Task

DIST, VERSION = "bigbench", "1.0.0"
TASKS_DIR = "bigbench/benchmark_tasks"
ROOT_ENV = "SLIMTUNE_BIGBENCH_DIR"
# Registered by name (any other BIG-bench task works as "bigbench:<task>" too).
FEATURED = ("strategyqa", "goal_step_wikihow", "social_iqa", "vitaminc_fact_verification",
            "elementary_math_qa")


def tasks_root() -> Path:
    """The benchmark_tasks directory: $SLIMTUNE_BIGBENCH_DIR when set (a directory of <task>/task.json,
    e.g. a BIG-bench checkout's bigbench/benchmark_tasks), else the sdist's, fetched from the package
    registry on first use."""
    from ..assets import package_asset
    from ..errors import ModelLoadError

    local = os.environ.get(ROOT_ENV)
    if local:
        root = Path(local).expanduser()
        if not any(root.glob("*/task.json")):
            raise DataError(f"{ROOT_ENV}={local} holds no <task>/task.json; point it at BIG-bench's "
                            f"bigbench/benchmark_tasks directory")
        return root
    try:
        return package_asset(DIST, VERSION, f"{TASKS_DIR}/strategyqa/task.json", sdist=True,
                             only=f"*/{TASKS_DIR}/*.json").parents[1]
    except ModelLoadError as e:
        raise DataError(f"BIG-bench tasks are not available: {e}. Either set {ROOT_ENV} to a BIG-bench "
                        f"checkout's bigbench/benchmark_tasks directory (git clone "
                        f"https://github.com/google/BIG-bench), or, online, load a copy from the "
                        f"Hugging Face hub with hf:<dataset>") from e


def available_tasks() -> list[str]:
    return sorted(p.parent.name for p in tasks_root().glob("*/task.json"))


def subtasks(task: str) -> list[str]:
    """Names of a task's subtask directories (empty for a task with examples of its own)."""
    return sorted(p.parent.name for p in (tasks_root() / task).glob("*/task.json"))


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read BIG-bench task file {path}: {e}") from e


def _question(text: str) -> str:
    """The key that makes two inputs the same question: the text with whitespace normalized."""
    return " ".join(text.split())


def _examples(data: dict, name: str) -> tuple[str, list[Example]]:
    """(kind, examples) of one task.json, formatted as BIG-bench formats them."""
    raw = data.get("examples")
    if not raw:
        raise DataError(f"BIG-bench task {name} has no examples")
    prefix = str(data.get("task_prefix", ""))
    input_prefix = data.get("example_input_prefix", "\nQ: ")
    output_prefix = data.get("example_output_prefix", "\nA: ")
    choice_prefix = data.get("choice_prefix", "\n  choice: ")
    append_choices = data.get("append_choices_to_input", True)

    if all("target_scores" in ex for ex in raw):
        kind = "multiple_choice"
    elif all("target" in ex for ex in raw):
        kind = "generation"
    else:
        raise DataError(f"BIG-bench task {name} mixes examples with and without target_scores; "
                        f"slimtune supports tasks that are all multiple choice or all generation")

    seen: set[str] = set()
    out = []
    for i, ex in enumerate(raw):
        key = json.dumps(ex, sort_keys=True)
        if key in seen:  # BIG-bench drops duplicate examples too
            continue
        seen.add(key)
        text = str(ex["input"])
        if kind == "multiple_choice":
            scores = ex["target_scores"]
            names = list(scores)
            if append_choices:
                # BIG-bench lists the choices in a random order so their position is no hint; the order
                # is fixed per example (not per split seed) so that the prompt's text, and its id, is too.
                listed = sorted(names)
                random.Random(f"{name}:{i}").shuffle(listed)
                text = text + choice_prefix + choice_prefix.join(listed)
            best = max(scores.values())
            if len(names) < 2 or best <= min(scores.values()):
                continue  # no gold choice (a few tasks have such rows; BIG-bench rejects them too)
            label = names.index(next(k for k in names if scores[k] == best))
            prompt, sep = split_prefix((prefix + input_prefix + text + output_prefix).lstrip("\n"))
            out.append(Example(prompt, tuple(sep + str(c) for c in names), label,
                               meta={"source": f"bigbench:{name}", "index": i, "question": _question(str(ex["input"]))}))
        else:
            targets = ex["target"] if isinstance(ex["target"], list) else [ex["target"]]
            targets = [str(t) for t in targets]
            prompt, sep = split_prefix((prefix + input_prefix + text + output_prefix).lstrip("\n"))
            out.append(Example(prompt, answer=sep + targets[0], target=targets[0],
                               meta={"source": f"bigbench:{name}", "index": i, "targets": targets,
                                     "question": _question(text)}))
    return kind, out


def _groups(per_file: list[tuple[int, list[Example]]]) -> list[list[Example]]:
    """Examples that must share a split, from (raw example count, examples) per task file: connected by
    the same question text (anywhere) or the same raw position in parallel files (see the module
    docstring), found with a union-find; ordered by their first raw position."""
    gold = [{e.meta["index"]: e.completion.strip() for e in examples} for _, examples in per_file]

    def aligned(a: int, b: int) -> bool:
        shared = gold[a].keys() & gold[b].keys()
        return per_file[a][0] == per_file[b][0] and bool(shared) and \
            sum(gold[a][i] == gold[b][i] for i in shared) >= 0.9 * len(shared)

    parallel = list(range(len(per_file)))  # each file's first parallel file, whose positions it shares
    for b in range(len(per_file)):
        parallel[b] = next(a for a in range(b + 1) if a == b or (parallel[a] == a and aligned(a, b)))
    flat = [(parallel[f], e) for f, (_, examples) in enumerate(per_file) for e in examples]
    parent = list(range(len(flat)))

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    first: dict[tuple, int] = {}
    for k, (f, e) in enumerate(flat):
        # An empty input (cause_and_effect: the question is all in the choices) is no shared question.
        keys = [("index", f, e.meta["index"])] + ([("question", e.meta["question"])] if e.meta["question"] else [])
        for key in keys:
            j = first.setdefault(key, k)
            parent[root(k)] = root(j)
    groups: dict[int, list[Example]] = {}
    for k, (_, e) in enumerate(flat):
        groups.setdefault(root(k), []).append(e)
    return sorted(groups.values(), key=lambda g: min(e.meta["index"] for e in g))


def _split_groups(groups: list[list[Example]], seed: int,
                  fractions: tuple[float, float]) -> tuple[list, list, list]:
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    n_train = int(round(len(order) * fractions[0]))
    n_val = int(round(len(order) * fractions[1]))
    cuts = (order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:])
    return tuple([ex for g in part for ex in groups[g]] for part in cuts)


def load_bigbench(name: str, seed: int = 0, fractions: tuple[float, float] = (0.6, 0.15),
                  max_examples: int | None = None) -> Task:
    """A BIG-bench task ("strategyqa", "goal_step_wikihow", "goal_step_wikihow:step_inference").

    `max_examples` keeps a deterministic sample (split evenly over subtasks, like BIG-bench) before
    splitting; `fractions` are the train and validation shares (the rest is test).
    """
    task, _, sub = name.replace("/", ":").partition(":")
    root = tasks_root()
    if not (root / task / "task.json").is_file():
        known = available_tasks()
        raise DataError(f"no BIG-bench task {task!r} in {root}; "
                        f"{len(known)} tasks are available, e.g. {', '.join(FEATURED)}; "
                        f"all: {', '.join(known)}")
    subs = subtasks(task)
    if sub:
        if sub not in subs:
            hint = f"its subtasks are {', '.join(subs)}" if subs else "it has no subtasks"
            raise DataError(f"BIG-bench task {task} has no subtask {sub!r}; {hint} "
                            f"(use bigbench:{task}:<subtask>)")
        files = [root / task / sub / "task.json"]
    else:
        data = _read(root / task / "task.json")
        files = [root / task / "task.json"] if "examples" in data else [root / task / s / "task.json" for s in subs]
        if not files:
            raise DataError(f"BIG-bench task {task} has neither examples nor subtasks")

    kinds, per_file, stops = set(), [], set()
    for path in files:
        label = task if path.parent.name == task else f"{task}:{path.parent.name}"
        data = _read(path)
        stops.add(data.get("stop_string") or "\n")
        kind, examples = _examples(data, label)
        kinds.add(kind)
        if max_examples is not None:
            # The same raw positions in every subtask of one length, so parallel subtasks stay aligned.
            n_raw, keep = len(data["examples"]), max(1, max_examples // len(files))
            chosen = set(random.Random(seed).sample(range(n_raw), min(keep, n_raw)))
            examples = [e for e in examples if e.meta["index"] in chosen]
        per_file.append((len(data["examples"]), examples))
    if len(kinds) > 1:
        raise DataError(f"BIG-bench task {task} mixes multiple-choice and generation subtasks "
                        f"({', '.join(subs)}); load one with bigbench:{task}:<subtask>")
    (kind,) = kinds
    # A repeated question stays in one split (see the module docstring).
    train, val, test = _split_groups(_groups(per_file), seed, fractions)
    spec = f"bigbench:{task}" + (f":{sub}" if sub else "")
    if kind == "generation":
        return Task(spec, kind, train, val, test, score=exact_match,
                    description=f"BIG-bench {spec[9:]} (generation, exact match)",
                    max_new_tokens=64, stop=tuple(sorted(stops)))
    return Task(spec, kind, train, val, test, description=f"BIG-bench {spec[9:]} (multiple choice)")

