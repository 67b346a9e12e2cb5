"""Prompt formats shared by the task loaders, and the exact-match scorer.

Convention (also used by the evaluator and fine-tuning): a choice or answer is a continuation of
the prompt, so it carries its own leading space (" positive", " A") and the prompt has no
trailing space. That keeps tokenization of prompt + continuation the same as of the whole text.
"""

from __future__ import annotations

import re
import string
from typing import Sequence

LETTERS = string.ascii_uppercase


def split_prefix(prefix: str) -> tuple[str, str]:
    """Split trailing spaces/tabs off a prompt or output prefix like "\\nA: ".

    Returns (prefix without them, separator for continuations): the space moves onto each choice or
    answer, so the prompt never ends in a space. A prefix ending in a newline (or empty) keeps it
    and gets no separator.
    """
    stripped = prefix.rstrip(" \t")
    if stripped.endswith("\n") or not stripped:
        return stripped, ""
    return stripped, " "


def continuation(prompt: str, text: str) -> tuple[str, str]:
    """(prompt, text) following the convention: the separating space, if any, starts `text`."""
    prompt, sep = split_prefix(prompt)
    return prompt, sep + text.strip()


def qa_prompt(question: str) -> str:
    """Generation / question-answer format."""
    return f"Question: {question.strip()}\nAnswer:"


def classification_prompt(text: str, input_name: str = "Text", label_name: str = "Label") -> str:
    """Classification format; the label words are the choices (" positive", " negative")."""
    return f"{input_name}: {text.strip()}\n{label_name}:"


def multiple_choice(prompt: str, choices: Sequence[str], lettered: bool = False) -> tuple[str, tuple[str, ...]]:
    """(prompt, choices) for continuation scoring.

    Default: each choice text is scored as a continuation of the prompt. `lettered`: the options
    are listed in the prompt as "A. ...", "B. ..." and the choices are the letters " A", " B", which
    suits instruction-tuned models and makes all continuations one token long.
    """
    if not lettered:
        prompt, sep = split_prefix(prompt)
        return prompt, tuple(sep + c.strip() for c in choices)
    if len(choices) > len(LETTERS):
        raise ValueError(f"lettered format supports at most {len(LETTERS)} choices, got {len(choices)}")
    options = "\n".join(f"{LETTERS[i]}. {c.strip()}" for i, c in enumerate(choices))
    body = prompt[: -len("Answer:")].rstrip("\n") if prompt.endswith("\nAnswer:") else prompt.rstrip()
    return f"{body}\n{options}\nAnswer:", tuple(f" {LETTERS[i]}" for i in range(len(choices)))


# ---- exact match

_EDGE_PUNCT = " \t\n\"'.,;:!?`"


def normalize_answer(text: str) -> str:
    """Lower-case, collapse whitespace, strip surrounding quotes and punctuation.

    Inner punctuation is kept on purpose: "3.5" must not equal "35".
    """
    return re.sub(r"\s+", " ", text.strip().lower()).strip(_EDGE_PUNCT)


def first_line(text: str) -> str:
    """The first non-empty line of a generation (what short-answer tasks are judged on)."""
    for line in text.strip().splitlines():
        if line.strip():
            return line
    return ""


def exact_match(prediction: str, example) -> float:
    """1.0 if the first line of `prediction` equals the gold answer (or any of meta["targets"])."""
    golds = example.meta.get("targets") or [example.target if example.target is not None else example.answer or ""]
    pred = normalize_answer(first_line(prediction))
    return float(any(pred == normalize_answer(g) for g in golds))
