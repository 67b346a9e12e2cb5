"""The user's own tasks: JSONL / JSON / CSV files, and Hugging Face datasets ("hf:...").

One row per example, either
- multiple choice: {"prompt", "choices": [...], "label": index or the exact choice text}, or
- generation:      {"prompt", "answer" (training target), "target" (scored answer; default answer)}.
"prompt" is used verbatim; a "question" column instead is formatted as "Question: ...\\nAnswer:"
and a "text" column as "Text: ...\\nLabel:" (multiple choice) or as a question (generation).
In CSV, "choices" is a JSON list string or the columns choice_0, choice_1, ... An optional
"split" column (train / validation / test) pins a row to a split; the other rows are split
deterministically by seed. Generation tasks from files are scored by normalized exact match.

Errors name the file, the line and the field, e.g. "data.jsonl:7: field 'label': 3 is out of
range for 2 choices", so a bad row can be found and fixed directly.
"""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import DataError
from .formats import classification_prompt, continuation, exact_match, multiple_choice, qa_prompt
from .tasks import SPLITS, Example, Task, split_examples

FILE_SUFFIXES = (".jsonl", ".json", ".csv")
PROMPT_FIELDS = ("prompt", "question", "text")
SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
                 "dev": "validation", "test": "test"}
_FORMAT = "expected {'prompt', 'choices', 'label'} or {'prompt', 'answer'[, 'target']}"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _text(value: Any, where: str, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: field '{field}': expected text, got {type(value).__name__} {value!r}")
    return str(value)


def _choices(row: dict, where: str) -> list[str] | None:
    value = row.get("choices")
    if _missing(value):
        # CSV style: choice_0, choice_1, ... (empty trailing cells mean fewer choices on this row)
        numbered = sorted((int(m.group(1)), k) for k in row if (m := re.fullmatch(r"choice_(\d+)", str(k))))
        if not numbered:
            return None
        value = [row[k] for _, k in numbered]
        while value and _missing(value[-1]):
            value.pop()
        if not value:
            return None
    elif isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError(f"{where}: field 'choices': {value!r} is not a JSON list such as "
                            f"[\"yes\", \"no\"]") from None
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{where}: field 'choices': expected a list of choices, got {value!r}")
    if len(value) < 2:
        raise DataError(f"{where}: field 'choices': needs at least 2 choices, got {len(value)}")
    choices = [_text(c, where, "choices").strip() for c in value]
    if any(not c for c in choices):
        raise DataError(f"{where}: field 'choices': choice {choices.index('')} is empty")
    if len(set(choices)) < len(choices):
        raise DataError(f"{where}: field 'choices': choices repeat ({choices}); the label would be ambiguous")
    return choices


def _label(value: Any, choices: list[str], where: str) -> int:
    """Index of the gold choice: an integer index, or the exact text of a choice."""
    n = len(choices)
    if _missing(value):
        raise DataError(f"{where}: field 'label': missing; give the index (0..{n - 1}) or the text of the right choice")
    if isinstance(value, bool):
        raise DataError(f"{where}: field 'label': {value!r} is not an index or a choice")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        text = value.strip()
        if text in choices:  # the text of a choice wins over reading it as an index
            return choices.index(text)
        if not re.fullmatch(r"-?\d+", text):
            raise DataError(f"{where}: field 'label': {value!r} is neither a choice ({', '.join(map(repr, choices))}) "
                            f"nor an index")
        value = int(text)
    if not isinstance(value, int):
        raise DataError(f"{where}: field 'label': {value!r} is not an index or a choice")
    if not 0 <= value < n:
        raise DataError(f"{where}: field 'label': {value} is out of range for {n} choices")
    return value


def row_example(row: dict, where: str, lettered: bool = False) -> tuple[Example, str | None]:
    """(example, pinned split or None) for one row; DataError names `where` and the field."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with fields, got {type(row).__name__}; {_FORMAT}")
    field = next((f for f in PROMPT_FIELDS if not _missing(row.get(f))), None)
    if field is None:
        present = ", ".join(map(repr, row)) or "none"
        raise DataError(f"{where}: field 'prompt': missing (also looked for 'question', 'text'; "
                        f"fields present: {present}); {_FORMAT}")
    body = _text(row[field], where, field)
    split = row.get("split")
    if _missing(split):
        split = None
    else:
        split = SPLIT_ALIASES.get(str(split).strip().lower())
        if split is None:
            raise DataError(f"{where}: field 'split': {row['split']!r} is not one of {', '.join(SPLITS)}")
    meta = {"source": where}

    choices = _choices(row, where)
    if choices is not None:
        label = _label(row.get("label"), choices, where)
        prompt = {"prompt": body, "question": qa_prompt(body)}.get(field) or classification_prompt(body)
        prompt, options = multiple_choice(prompt, choices, lettered)
        return Example(prompt, options, label, meta=meta), split

    answer, target = row.get("answer"), row.get("target")
    if _missing(answer) and _missing(target):
        hint = "; for multiple choice give 'choices' and 'label'" if "label" in row else ""
        raise DataError(f"{where}: field 'answer': missing (a generation row needs 'answer'){hint}")
    answer = _text(target if _missing(answer) else answer, where, "answer")
    target = answer if _missing(target) else _text(target, where, "target")
    prompt, answer = continuation(body if field == "prompt" else qa_prompt(body), answer)
    return Example(prompt, answer=answer, target=target.strip(), meta=meta), split


def build_task(name: str, rows: Iterable[tuple[str, Any]], seed: int = 0,
               fractions: tuple[float, float] = (0.6, 0.15), lettered: bool = False,
               carve_validation: bool = False) -> Task:
    """A task from (location, row) pairs; rows with a split are pinned, the rest split by seed.

    `carve_validation`: when no row is left to split and no validation row was given, take the
    validation share of the train rows instead (for datasets that ship only train and test).
    """
    pinned: dict[str, list[Example]] = {s: [] for s in SPLITS}
    pool: list[Example] = []
    kind = first = None
    for where, row in rows:
        example, split = row_example(row, where, lettered)
        this = "multiple_choice" if example.choices else "generation"
        if kind is None:
            kind, first = this, where
        elif this != kind:
            field = "choices" if kind == "multiple_choice" else "answer"
            raise DataError(f"{where}: field '{field}': this row is {this.replace('_', ' ')} but the first "
                            f"row ({first}) is {kind.replace('_', ' ')}; one task holds one kind of row")
        (pinned[split] if split else pool).append(example)
    if kind is None:
        raise DataError(f"{name}: no rows; {_FORMAT}, one per line (JSONL) or per CSV row")
    if pool:
        train, val, test = split_examples(pool, seed, fractions)
        pinned["train"] += train
        pinned["validation"] += val
        pinned["test"] += test
    elif carve_validation and not pinned["validation"] and len(pinned["train"]) > 1:
        share = fractions[1] / (fractions[0] + fractions[1])
        items = list(pinned["train"])
        random.Random(seed).shuffle(items)
        n_val = max(1, int(round(len(items) * share)))
        pinned["validation"], pinned["train"] = items[:n_val], items[n_val:]
    score = exact_match if kind == "generation" else None
    return Task(name, kind, pinned["train"], pinned["validation"], pinned["test"], score=score,
                description=f"{name} ({kind.replace('_', ' ')}, {sum(map(len, pinned.values()))} examples)")


# ---- files

def jsonl_rows(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    """("<path>:<line>", row) of each non-empty JSONL line; a line that is not JSON is refused by place."""
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno}); "
                            f"each line must be one JSON object") from None
        yield f"{path}:{lineno}", row


def _json_rows(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        yield from jsonl_rows(path, text)  # many ".json" files are really JSON Lines
        return
    if isinstance(data, dict) and isinstance(data.get("examples"), list):
        data = data["examples"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of rows (or {{\"examples\": [...]}}), got {type(data).__name__}")
    for i, row in enumerate(data):
        yield f"{path}: item {i}", row


def _csv_rows(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    reader = csv.DictReader(text.splitlines(keepends=True))
    if not reader.fieldnames:
        return
    names = [n.strip() if n else n for n in reader.fieldnames]
    reader.fieldnames = names
    if not any(f in names for f in PROMPT_FIELDS):
        raise DataError(f"{path}:1: field 'prompt': the header has no 'prompt' (or 'question', 'text') column; "
                        f"columns: {', '.join(map(str, names))}")
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if None in row:
            raise DataError(f"{where}: the row has more cells than the header has columns")
        if all(_missing(v) for v in row.values()):
            continue
        yield where, row


def load_file_task(path: str | Path, seed: int = 0, fractions: tuple[float, float] = (0.6, 0.15),
                   lettered: bool = False) -> Task:
    """A task from a .jsonl, .json or .csv file (see the module docstring for the row format)."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(FILE_SUFFIXES)}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # tolerate a BOM (Excel CSV exports)
    except FileNotFoundError:
        raise DataError(f"task file {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 ({e}); save it as UTF-8") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty; {_FORMAT}")
    reader = {".jsonl": jsonl_rows, ".json": _json_rows, ".csv": _csv_rows}[path.suffix.lower()]
    return build_task(str(path), reader(path, text), seed, fractions, lettered)


# ---- Hugging Face datasets

def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("hf: tasks need the optional `datasets` package: pip install 'slimtune[datasets]'") from None
    return datasets


def _load_hf(source: str):
    """A Dataset or DatasetDict: a save_to_disk directory, a local data file, or a hub NAME[:CONFIG]."""
    datasets = _import_datasets()
    path = Path(source).expanduser()
    builders = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
    try:
        if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            return datasets.load_from_disk(str(path))
        if path.is_dir():
            return datasets.load_dataset(str(path))
        if path.is_file():
            builder = builders.get(path.suffix.lower())
            if builder is None:
                raise DataError(f"hf:{source}: unsupported data file type {path.suffix!r}; "
                                f"use one of {', '.join(builders)}")
            return datasets.load_dataset(builder, data_files=str(path))
        name, _, config = source.partition(":")
        return datasets.load_dataset(name, config or None)
    except DataError:
        raise
    except Exception as e:  # offline hub lookups fail with many different exception types
        raise DataError(
            f"could not load dataset hf:{source} ({type(e).__name__}: {str(e)[:300]}); slimtune runs offline: "
            f"save the dataset where it is reachable with Dataset.save_to_disk(DIR) and use hf:DIR, "
            f"or point hf: at a local .jsonl/.csv/.parquet file") from e


def load_hf_task(source: str, seed: int = 0, fractions: tuple[float, float] = (0.6, 0.15),
                 lettered: bool = False, prompt_column: str | None = None, choices_column: str = "choices",
                 label_column: str = "label", answer_column: str = "answer", target_column: str = "target",
                 max_examples: int | None = None) -> Task:
    """A task from a Hugging Face dataset ("hf:" stripped from `source`).

    Columns are mapped onto the file row format: `prompt_column` (default: the first of prompt,
    question, text; a custom name is formatted as a question), `choices_column`, `label_column`,
    `answer_column`, `target_column`. A ClassLabel label column without a choices column becomes a
    classification task whose choices are the class names. Splits named train / validation
    (valid, dev) / test are kept; other splits are pooled and split by seed. `max_examples` keeps
    the first rows of each split.
    """
    datasets = _import_datasets()
    loaded = _load_hf(source)
    parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"": loaded}
    columns = next(iter(parts.values())).column_names
    if prompt_column is None:
        prompt_column = next((c for c in PROMPT_FIELDS if c in columns), None)
    if prompt_column not in columns:
        raise DataError(f"hf:{source}: no prompt column {prompt_column!r}; columns are {', '.join(columns)}; "
                        f"pass prompt_column=NAME")
    prompt_key = prompt_column if prompt_column in PROMPT_FIELDS else "question"
    mapping = {prompt_column: prompt_key, choices_column: "choices", label_column: "label",
               answer_column: "answer", target_column: "target"}
    features = next(iter(parts.values())).features
    class_names = None
    if choices_column not in columns and isinstance(features.get(label_column), datasets.ClassLabel):
        class_names = features[label_column].names

    def rows() -> Iterator[tuple[str, dict]]:
        for split_name, ds in parts.items():
            if max_examples is not None:
                ds = ds.select(range(min(max_examples, len(ds))))
            pinned = SPLIT_ALIASES.get(split_name.lower()) if split_name else None
            for i, raw in enumerate(ds):
                if raw.get(label_column) == -1:
                    continue  # unlabelled row (e.g. GLUE test splits use -1)
                row = {new: raw[old] for old, new in mapping.items() if old in raw}
                if class_names is not None:
                    row["choices"] = class_names
                if pinned:
                    row["split"] = pinned
                yield f"hf:{source}" + (f" [{split_name}]" if split_name else "") + f" row {i}", row

    return build_task(f"hf:{source}", rows(), seed, fractions, lettered, carve_validation=True)
