"""A multiple-choice task seen as classification: every example's choices are the same label set
(in any order), and the label id is the gold choice's index in that set. The text an encoder reads
is the example's prompt (polarity: "Review: ...\\nSentiment:")."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import torch

from ..data.tasks import SPLITS, Example, Task
from ..errors import ConfigError


@dataclass(frozen=True)
class ClassificationView:
    task: Task
    labels: tuple[str, ...]

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def label_id(self, example: Example) -> int:
        return self.labels.index(example.choices[example.label].strip())

    def split(self, name: str) -> list[Example]:
        return self.task.split(name)

    def label_ids(self, examples: Sequence[Example]) -> list[int]:
        return [self.label_id(ex) for ex in examples]


def classification_view(task: Task, labels: Sequence[str] | None = None) -> ClassificationView:
    """The task as classification over one label set (ordered by first appearance over train, validation,
    test, unless `labels` fixes it, e.g. a trained classifier's id2label). Refuses generation tasks and
    multiple-choice tasks whose examples have different choices (their answers are not one label set)."""
    if task.kind != "multiple_choice":
        raise ConfigError(f"task {task.spec} is a {task.kind} task; an encoder classifies multiple-choice tasks "
                          "whose examples share one label set (polarity, BIG-bench binary/multi-class tasks, files "
                          "with 'choices' and 'label')")
    seen: list[str] = []
    sets = set()
    for name in SPLITS:
        for ex in task.split(name):
            choices = tuple(c.strip() for c in ex.choices)
            sets.add(frozenset(choices))
            seen += [c for c in choices if c not in seen]
    if len(sets) > 1:
        raise ConfigError(f"task {task.spec} is not a classification task: its examples have {len(sets)} different "
                          "choice sets, so there is no fixed label set for a classification head (an encoder "
                          "classifies tasks such as polarity or BIG-bench tasks with fixed answers)")
    if labels is not None:
        labels = tuple(str(l).strip() for l in labels)
        if set(labels) != set(seen):
            raise ConfigError(f"the classifier's labels {list(labels)} are not task {task.spec}'s labels {seen}")
        seen = list(labels)
    if len(seen) < 2:
        raise ConfigError(f"task {task.spec} has {len(seen)} label(s); classification needs at least two")
    return ClassificationView(task, tuple(seen))


@contextmanager
def truncating_start(tokenizer):
    """The tokenizer, cutting a text longer than max_length at its start instead of its end: a classification
    prompt ends with what is asked ("Passage: ... Question: ...\\nAnswer:"), so it is kept, as the trainer
    keeps a decoder example's completion. Special tokens ([CLS] ... [SEP]) stay."""
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        yield tokenizer
    finally:
        tokenizer.truncation_side = side


class ClassificationDataset(torch.utils.data.Dataset):
    """Tokenized texts (their start cut to max_length) with their label ids; `items` as train.ExampleDataset's."""

    def __init__(self, view: ClassificationView, examples: Sequence[Example], tokenizer, max_length: int):
        self.items = []
        with truncating_start(tokenizer):
            for ex in examples:
                ids = tokenizer(ex.prompt, truncation=True, max_length=max_length)["input_ids"]
                self.items.append({"input_ids": ids, "labels": view.label_id(ex)})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class LabelCollator:
    """Right-pads input ids (attention 0 on padding); labels are one id per sequence."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), n), self.pad, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, b in enumerate(batch):
            ids[i, :len(b["input_ids"])] = torch.tensor(b["input_ids"])
            mask[i, :len(b["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.tensor([b["labels"] for b in batch], dtype=torch.long)}
