"""Downstream tasks: examples with prompts, deterministic train/validation/test splits, scorers.

Two kinds of task:
- "multiple_choice" (also classification): the model scores each choice as a continuation of the
  prompt; the gold choice is `label`. Fine-tuning trains on prompt + choices[label].
- "generation": the model generates after the prompt; `score(prediction, example)` judges it
  against `target`. Fine-tuning trains on prompt + answer (e.g. a worked solution).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..errors import DataError

KINDS = ("multiple_choice", "generation")
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Example:
    prompt: str
    choices: tuple[str, ...] = ()
    label: int | None = None
    answer: str | None = None  # training target text for generation tasks
    target: str | None = None  # gold final answer that the scorer compares with
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def id(self) -> str:
        """A stable identity for leak checks: `meta["uid"]` when the loader gives one, else a hash of
        the prompt text. Two examples with the same prompt are the same question, whatever their
        choices, so they count as one example for splits and for overlap checks."""
        uid = self.meta.get("uid")
        return str(uid) if uid is not None else example_id(self.prompt)

    @property
    def completion(self) -> str:
        """The text the model should produce after the prompt (what fine-tuning trains on)."""
        if self.choices:
            return self.choices[self.label]
        return self.answer if self.answer is not None else (self.target or "")


@dataclass
class Task:
    name: str
    kind: str
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    score: Callable[[str, Example], float] | None = None
    description: str = ""
    max_new_tokens: int = 32  # for generation tasks
    stop: tuple[str, ...] = ("\n\n",)  # generation stops at any of these
    # How the task was loaded (load_task sets them): the spec, the split seed and the loader's options.
    spec: str = ""
    split_seed: int = 0
    options: dict = field(default_factory=dict)
    # A suite's member task specs; each example's meta["task"] names its member (evaluation reports per member).
    members: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.spec = self.spec or self.name
        if self.kind not in KINDS:
            raise DataError(f"task {self.name}: kind {self.kind!r} is not one of {KINDS}")
        if self.kind == "generation" and self.score is None:
            raise DataError(f"task {self.name}: a generation task needs a scorer")

    def split(self, name: str) -> list[Example]:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        return {s: len(self.split(s)) for s in SPLITS}

    def with_spec(self, spec: str, split_seed: int, options: dict) -> "Task":
        """Record how the task was loaded (data.registry.load_task does); returns the task."""
        self.spec, self.split_seed, self.options = spec, split_seed, dict(options)
        return self


def example_id(text: str) -> str:
    """16 hex digits of SHA-256 of a text: the default id of an example (see Example.id)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def split_examples(examples: Sequence[Example], seed: int = 0,
                   fractions: tuple[float, float] = (0.6, 0.15)) -> tuple[list, list, list]:
    """Deterministic shuffled split into train / validation / test (the rest).

    Examples sharing an id (the same prompt) stay together in one split, so a repeated question
    can never be trained on and tested on. `seed` is the task's split seed, never a training seed.
    """
    groups: dict[str, list[Example]] = {}
    for ex in examples:
        groups.setdefault(ex.id, []).append(ex)
    order = list(groups)
    random.Random(seed).shuffle(order)
    n_train = int(round(len(order) * fractions[0]))
    n_val = int(round(len(order) * fractions[1]))
    cuts = (order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:])
    return tuple([ex for key in part for ex in groups[key]] for part in cuts)


def multiple_choice_task(name: str, examples: Sequence[Example], seed: int = 0,
                         fractions: tuple[float, float] = (0.6, 0.15), description: str = "") -> Task:
    train, val, test = split_examples(examples, seed, fractions)
    return Task(name, "multiple_choice", train, val, test, description=description)


# ---- sentence polarity (gensim's pang_lee_polarity.cor: 200 labelled movie-review sentences)

POLARITY_CHOICES = (" negative", " positive")


def polarity_prompt(sentence: str) -> str:
    return f"Review: {sentence}\nSentiment:"


def load_polarity(seed: int = 0) -> Task:
    from gensim.test.utils import datapath

    path = datapath("pang_lee_polarity.cor")
    examples = []
    with open(path, encoding="cp1252", errors="replace") as f:  # the file is Windows-1252
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            tag, _, sentence = line.partition(" ")
            if tag not in ("__label__neg", "__label__pos") or not sentence:
                raise DataError(f"{path}:{lineno}: expected '__label__neg|__label__pos <sentence>'")
            examples.append(Example(polarity_prompt(sentence.strip()), POLARITY_CHOICES,
                                    int(tag == "__label__pos")))
    return multiple_choice_task(
        "polarity", examples, seed,
        description="Movie-review sentence polarity (Pang & Lee), 200 sentences bundled with gensim",
    )
